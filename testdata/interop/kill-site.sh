#!/usr/bin/env bash
# kill-site.sh KIT SITE VICTIM: the peer script's CLIENT_CMD for a fault
# test: every site runs NVFlare's own client (its kit's sub_start.sh), and
# the site named VICTIM is killed (SIGKILL, its parent and job processes)
# three seconds after its job was deployed, in the middle of the rounds.
set -u
kit=$1 site=$2 victim=$3
cd "$kit" || exit 1
if [[ "$site" != "$victim" ]]; then
  exec bash "$kit/startup/sub_start.sh" --once
fi
setsid bash "$kit/startup/sub_start.sh" --once &
for _ in $(seq 600); do
  compgen -G "$kit/*/app_$site" >/dev/null && break
  sleep 0.1
done
sleep 3
echo "kill-site: killing $site (SIGKILL)"
pkill -KILL -f -- "$kit" 2>/dev/null
sleep 1
pkill -KILL -f -- "$kit" 2>/dev/null
exit 137
