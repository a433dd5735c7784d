//! SQL types pgrx 0.18 does not map, declared here: `pg_lsn` (an `XLogRecPtr`, uint64 passed
//! by value, `utils/pg_lsn.h`) and `regclass` (an OID passed by value).

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::nullable::Nullable;
use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum};
use std::fmt;

/// A WAL position, printed the way PostgreSQL prints it (`0/16B3748`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgLsn(pub u64);

impl fmt::Display for PgLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl IntoDatum for PgLsn {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::PG_LSNOID
    }
}

impl FromDatum for PgLsn {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            Some(PgLsn(datum.value() as u64))
        }
    }
}

// SAFETY: ArgAbi must unbox the datum of the SQL type the argument is declared as. PgLsn is
// declared as `pg_lsn` (impl_sql_translatable below), a by-value uint64, and both methods go
// through FromDatum, which only reinterprets that 64-bit value and never dereferences it.
unsafe impl<'fcx> ArgAbi<'fcx> for PgLsn {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // Only reached for non-null arguments (pgrx checks strictness first).
        // SAFETY: our caller guarantees `arg` is this call's argument of the declared type,
        // pg_lsn, which is what unbox_arg_using_from_datum requires; FromDatum for PgLsn
        // reads the by-value datum and handles NULL.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(PgLsn(0))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above: `arg` is a pg_lsn argument of this call (possibly NULL, which
        // FromDatum maps to None).
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: BoxRet must return a datum of the declared SQL return type: `pg_lsn` is a by-value
// uint64 on the 64-bit platforms pgrx supports, so the raw value is the complete datum and
// it points to no Rust memory.
unsafe impl BoxRet for PgLsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: `fcinfo` is the live call frame pgrx passes in; a by-value pg_lsn datum
        // (see the impl's comment) is a valid non-NULL result for it.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}

pgrx::impl_sql_translatable!(PgLsn, "pg_lsn");

/// A `regclass` argument: the relation's OID (SQL callers may pass a name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegClass(pub pg_sys::Oid);

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0.to_u32()))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            Some(RegClass(pg_sys::Oid::from(datum.value() as u32)))
        }
    }
}

// SAFETY: ArgAbi must unbox the datum of the SQL type the argument is declared as. RegClass
// is declared as `regclass` (impl_sql_translatable below), a by-value 32-bit OID, and both
// methods go through FromDatum, which only truncates that value to an Oid.
unsafe impl<'fcx> ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: our caller guarantees `arg` is this call's argument of the declared type,
        // regclass, which is what unbox_arg_using_from_datum requires; FromDatum for RegClass
        // reads the by-value datum and handles NULL.
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(RegClass(pg_sys::InvalidOid))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above: `arg` is a regclass argument of this call (possibly NULL, which
        // FromDatum maps to None).
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");

#[cfg(test)]
mod tests {
    use super::PgLsn;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(PgLsn(0x0000_0001_0016_B374).to_string(), "1/16B374");
        assert_eq!(PgLsn(0).to_string(), "0/0");
    }
}
