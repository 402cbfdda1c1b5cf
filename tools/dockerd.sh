#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock.
#
#   tools/dockerd.sh start   start it if it is not running (systemd if it is PID 1, otherwise
#                            dockerd in the background, logging to /var/log/zeppelin-dockerd.log)
#   tools/dockerd.sh stop    stop a dockerd that this script started
#   tools/dockerd.sh status  exit 0 if the engine answers
set -euo pipefail

sock=/var/run/docker.sock
pidfile=/run/zeppelin-dockerd.pid
log=/var/log/zeppelin-dockerd.log

answers() { curl -fsS --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

case "${1:-start}" in
    status)
        answers
        ;;
    start)
        answers && exit 0
        [ "$(id -u)" = 0 ] || {
            echo "dockerd: the Docker engine is not running; start it as root: sudo bash $0 start" >&2
            exit 1
        }
        if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
            systemctl start docker
        else
            command -v dockerd >/dev/null || {
                echo "dockerd: dockerd is not installed (run tools/setup.sh)" >&2
                exit 1
            }
            echo "dockerd: starting the Docker engine in the background (log: $log)"
            # setsid: the engine outlives this shell and is not killed by its job control.
            setsid dockerd >>"$log" 2>&1 </dev/null &
            echo $! >"$pidfile"
        fi
        for _ in $(seq 1 120); do
            answers && exit 0
            sleep 0.5
        done
        echo "dockerd: the Docker engine did not answer on $sock within 60 s; last log lines:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
        ;;
    stop)
        [ -f "$pidfile" ] || exit 0
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "$pidfile"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
