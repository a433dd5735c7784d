# shellcheck shell=bash
# Where the benchmark's processes run, for bench/fpw.sh and bench/demo.sh. Source it.
# Both placements' groups are created (processes move between them):
#   separated  the deployment: PostgreSQL and the load generator on CPU 0, the streaming
#              client or the helper alone on CPU 1 (storage's CPU is not the compute's)
#   shared     everything on both CPUs
# By cgroup v1 (cpuset: a group's processes and everything they fork stay on its CPUs;
# cpuacct: each group's CPU time is measured), falling back to taskset, without CPU figures,
# where those hierarchies are not mounted and writable (cgroup v2 only, or not root).
# placement_setup creates the groups, placement_remove removes them (call it on exit).
# Roles: pg (PostgreSQL), bench (pgbench), load (the streaming client or the helper).
# cgroup v1 groups fpw_bench_<pid>_<placement>_<role> in the cpuset and cpuacct hierarchies.
cg_cpuset=/sys/fs/cgroup/cpuset
cg_cpuacct=/sys/fs/cgroup/cpuacct
use_cgroups=0
if [ -w "$cg_cpuset" ] && [ -f "$cg_cpuset/cpuset.cpus" ] && [ -w "$cg_cpuacct" ] && [ -f "$cg_cpuacct/cpuacct.usage" ]; then
    use_cgroups=1
fi
cg_name() { echo "fpw_bench_$$_$1_$2"; }
cpus_of() {
    case $1/$2 in
    separated/pg | separated/bench) echo 0 ;;
    separated/load) echo 1 ;;
    shared/*) echo 0-1 ;;
    esac
}
placement_setup() {
    [ "$use_cgroups" = 1 ] || return 0
    local p r g
    for p in separated shared; do
        for r in pg bench load; do
            g=$(cg_name "$p" "$r")
            mkdir -p "$cg_cpuset/$g" "$cg_cpuacct/$g"
            cpus_of "$p" "$r" >"$cg_cpuset/$g/cpuset.cpus"
            cat "$cg_cpuset/cpuset.mems" >"$cg_cpuset/$g/cpuset.mems"
        done
    done
}
placement_remove() {
    [ "$use_cgroups" = 1 ] || return 0
    local d pid
    for d in "$cg_cpuset"/fpw_bench_$$_* "$cg_cpuacct"/fpw_bench_$$_*; do
        [ -d "$d" ] || continue
        # Leftover processes go back to the root group, so the group can be removed.
        while read -r pid; do echo "$pid" >"${d%/*}/cgroup.procs" 2>/dev/null || true; done <"$d/cgroup.procs"
        rmdir "$d" 2>/dev/null || true
    done
}
# place PLACEMENT ROLE PID...: moves processes (with their threads) to the role's CPUs.
place() {
    local p=$1 r=$2 pid
    shift 2
    for pid in "$@"; do
        if [ "$use_cgroups" = 1 ]; then
            echo "$pid" >"$cg_cpuset/$(cg_name "$p" "$r")/cgroup.procs" 2>/dev/null || true
            echo "$pid" >"$cg_cpuacct/$(cg_name "$p" "$r")/cgroup.procs" 2>/dev/null || true
        else
            taskset -a -p -c "$(cpus_of "$p" "$r")" "$pid" >/dev/null 2>&1 || true
        fi
    done
}
# cpu_ns PLACEMENT ROLE: CPU time used by the role's group so far (ns), or - without cgroups.
cpu_ns() {
    if [ "$use_cgroups" = 1 ]; then cat "$cg_cpuacct/$(cg_name "$1" "$2")/cpuacct.usage"; else echo -; fi
}
# in_role PLACEMENT ROLE CMD...: runs CMD in the role's group.
in_role() {
    local p=$1 r=$2
    shift 2
    if [ "$use_cgroups" = 1 ]; then
        bash -c 'echo $$ >"$1/cgroup.procs" && echo $$ >"$2/cgroup.procs" && shift 2 && exec "$@"' _ \
            "$cg_cpuset/$(cg_name "$p" "$r")" "$cg_cpuacct/$(cg_name "$p" "$r")" "$@"
    else
        taskset -c "$(cpus_of "$p" "$r")" "$@"
    fi
}

