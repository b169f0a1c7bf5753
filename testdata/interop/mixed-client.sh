#!/usr/bin/env bash
# mixed-client.sh FLAREGO KIT SITE: the peer script's CLIENT_CMD for a job
# with one site of each kind: site-1 runs `flarego client`, every other
# site NVFlare's own client (its kit's sub_start.sh), both from their kit
# folder as start.sh would run them.
set -u
bin=$1 kit=$2 site=$3
cd "$kit" || exit 1
if [[ "$site" == site-1 ]]; then
  exec "$bin" client -m "$kit" -s fed_client.json --set secure_train=true "uid=$site" config_folder=config
fi
exec bash "$kit/startup/sub_start.sh" --once
