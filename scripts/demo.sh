#!/usr/bin/env bash
# make demo: the job end to end on built-in sample data, in a scratch folder:
# key → encrypted architecture → training → encrypted model → inference CSV.
# Training is local (one site) until the federated client and server land.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/bin/flarego"
work=$(mktemp -d "${TMPDIR:-/tmp}/flarego-demo.XXXXXX")
mkdir -p "$work/input" "$work/output" "$work/app/custom"
export FLAREGO_INPUT="$work/input" FLAREGO_OUTPUT="$work/output" FLAREGO_SERVER_CREDENTIALS="$work/server-credentials"
cd "$work"

echo "== 1. key (as Fernet.generate_key() writes it, mode 0600), mounted as the FCP secret"
"$bin" keygen key.txt
printf '{"key": "%s"}' "$(cat key.txt)" > input/secret_run_params.json

echo "== 2. encrypted architecture: only network.json.enc ships in the job"
"$bin" encrypt "$here/testdata/pneumonia_spec.json" key.txt app/custom/network.json.enc

echo "== 3. sample data: synthetic chest X-rays in the FCP input layout"
"$bin" samples --n 20 input

echo "== 4. container entrypoint: every *.enc opens with the FCP key"
"$bin" unseal app

echo "== 5. training (local, one site; the spec is decrypted in memory)"
"$bin" train --spec app/custom/network.json.enc --epochs 3 --lr 0.0001

echo "== 6. the encrypted model, inspected in memory"
"$bin" pt inspect output/model_parameters.pt.enc | sed -n '1,4p;$p'

echo "== 7. inference: Model_Score matched to dataset.csv rows by image path"
"$bin" infer --spec app/custom/network.json.enc output/model_parameters.pt.enc
head -4 output/dataset.csv

echo
echo "federated training (server + two clients on loopback) is not built yet; step 5 trains one site locally"
echo "encrypted model: $work/output/model_parameters.pt.enc"
echo "inference CSV:   $work/output/dataset.csv"
