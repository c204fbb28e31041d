# Shared by the bench scripts (sourced): timing of runs as the postgres user, and
# ratios against targets. Needs $B (the bench directory) and $RESULTS (a file of lines
# "NAME SECONDS PEAK-RSS-KIB CPU-SECONDS", or "NAME VALUE" for sizes).

as_pg() { runuser -u postgres -- "$@"; }

# timed NAME CMD...: runs CMD as postgres with the page cache dropped first (unless WARM
# is set: a command run every minute finds itself cached), records elapsed seconds,
# peak RSS (KiB) and CPU seconds (user + system). A peer's failure (NAME not starting
# with pgkeep_) is reported and the run goes on.
timed() {
    local name=$1; shift
    [ -n "${WARM:-}" ] || { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
    as_pg env AWS_CA_BUNDLE="${AWS_CA_BUNDLE:-}" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
        AWS_DEFAULT_REGION=us-east-1 RESTIC_PASSWORD=bench /usr/bin/time -f "%e %M %U %S" \
        -o "$B/time.$name" "$@" > "$B/out.$name" 2>&1 || {
        echo "  $name FAILED:"; tail -n 3 "$B/out.$name" | sed 's/^/    /'
        case "$name" in pgkeep_*) exit 1 ;; esac
        return 0; }
    read -r secs rss user sys < <(tail -n 1 "$B/time.$name")
    local cpu; cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
    echo "$name $secs $rss $cpu" >> "$RESULTS"
    printf '  %-32s %8.2f s  %7d MiB peak  %6.2f s CPU\n' "$name" "$secs" $((rss / 1024)) "$cpu"
}

# record NAME VALUE: a figure that is not a time (a size in bytes).
record() { echo "$1 $2" >> "$RESULTS"; printf '  %-32s %s\n' "$1" "$2"; }

get() { awk -v n="$1" '$1 == n { print $2 }' "$RESULTS"; }

# ratio A B TARGET LABEL: A/B against TARGET (at most; "-": no target, for information).
ratio() { awk -v a="$(get "$1")" -v b="$(get "$2")" -v t="$3" -v l="$4" \
    'BEGIN { if (a == "" || b == "" || b == 0) { printf "  %-56s   n/a  (a run failed, see above)\n", l; exit }
             r = a / b; if (t == "-") { printf "  %-56s %5.2fx  [no target]\n", l, r; exit }
             printf "  %-56s %5.2fx  [<= %.2fx] %s\n", l, r, t, (r <= t ? "met" : "NOT MET") }'; }
