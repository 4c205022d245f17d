#!/bin/sh
# pg_receivewal through the capture slot, restarted whenever it exits, for as long as the container lives.
# Restart-safe: pg_receivewal continues from the newest file in the archive and the slot kept the WAL since.
# Settings (docker/env/wal_capturer.env, or the fleet driver): PGHOST PGPORT PGUSER PGPASSFILE
# PITR_CAPTURE_SLOT, and PITR_WAL_ARCHIVE and PITR_CAPTURER_LOG (appended to; the fleet reads its errors
# there) or PITR_HOME, under which both are found.
set -u
# Under Compose only PITR_HOME is given: the archive and the log are where the fleet keeps them.
: "${PITR_WAL_ARCHIVE:=$PITR_HOME/wal_archive}"
log="${PITR_CAPTURER_LOG:-$PITR_HOME/logs/capturer.log}"
stopping=""
child=""
stop() {
    stopping=1
    # SIGINT: pg_receivewal flushes what it has and exits cleanly.
    [ -n "$child" ] && kill -INT "$child" 2>/dev/null
}
trap stop TERM INT
while [ -z "$stopping" ]; do
    # A .partial of zeros only was begun and never written (stopped while pg_receivewal filled it): it holds
    # no WAL, and pg_receivewal refuses to start on one that is neither empty nor a whole segment. As
    # fleet/supervise.py's clear_unwritten_partials.
    for partial in "$PITR_WAL_ARCHIVE"/*.partial; do
        [ -f "$partial" ] || continue
        size=$(stat -c %s "$partial")
        if cmp -s -n "$size" "$partial" /dev/zero; then
            rm -f "$partial"
            echo "$(date -u +%FT%T.%3NZ) run_wal_capturer: removed $partial ($size bytes of zeros only)" >>"$log"
        fi
    done
    echo "$(date -u +%FT%T.%3NZ) run_wal_capturer: starting pg_receivewal" >>"$log"
    pg_receivewal -D "$PITR_WAL_ARCHIVE" --slot="$PITR_CAPTURE_SLOT" --no-password --synchronous --verbose \
        >>"$log" 2>&1 &
    child=$!
    wait "$child"
    code=$?
    # A trapped signal interrupts wait: wait again for the child to finish.
    while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
    child=""
    echo "$(date -u +%FT%T.%3NZ) run_wal_capturer: pg_receivewal exited with code $code" >>"$log"
    [ -n "$stopping" ] || sleep 1
done
