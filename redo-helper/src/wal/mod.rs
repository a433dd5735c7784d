//! PostgreSQL 15 WAL decoding: page headers, record assembly, block references, FPI
//! decompression and typed views of record main data.
