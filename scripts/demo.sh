#!/usr/bin/env bash
# make demo: the job end to end on built-in sample data, in a scratch folder.
# Today it runs the parts that exist: a key, an encrypted model file made by
# the server persistor's format, its inspection in memory, and the container
# entrypoint's unseal check. Federated training and inference come with the
# model and flare packages.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/bin/flarego"
work=$(mktemp -d "${TMPDIR:-/tmp}/flarego-demo.XXXXXX")
mkdir -p "$work/input" "$work/output" "$work/app"
export FLAREGO_INPUT="$work/input" FLAREGO_OUTPUT="$work/output" FLAREGO_SERVER_CREDENTIALS="$work/server-credentials"
cd "$work"

echo "== 1. key (as Fernet.generate_key() writes it, mode 0600)"
"$bin" keygen key.txt
printf '{"key": "%s"}' "$(cat key.txt)" > input/secret_run_params.json

echo "== 2. encrypted model weights (torch's own .pt of the seed's PneumoniaModel)"
"$bin" encrypt "$here/testdata/torch/pneumonia_init.pt" key.txt output/model_parameters.pt.enc
echo "== 3. inspect it, decrypted in memory only"
"$bin" pt inspect output/model_parameters.pt.enc --key-file key.txt | sed -n '1,6p;$p'

echo "== 4. container entrypoint: every *.enc opens with the FCP key, then the FCP command runs"
cp output/model_parameters.pt.enc app/
"$bin" unseal app -- echo "FCP command would start here"

echo "== 5. federated training and inference: not built yet (model and flare packages)"
echo
echo "encrypted model: $work/output/model_parameters.pt.enc"
ls -l "$work/output"
