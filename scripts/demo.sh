#!/usr/bin/env bash
# make demo: the job end to end on built-in sample data, in a scratch folder:
# key → encrypted architecture → federated training (a server and two
# clients on loopback gRPC) → encrypted model → inference CSV.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/bin/flarego"
work=$(mktemp -d "${TMPDIR:-/tmp}/flarego-demo.XXXXXX")
mkdir -p "$work/input" "$work/output" "$work/job"
export FLAREGO_INPUT="$work/input" FLAREGO_OUTPUT="$work/output" FLAREGO_SERVER_CREDENTIALS="$work/server-credentials"
cd "$work"

echo "== 1. key (as Fernet.generate_key() writes it, mode 0600), mounted as the FCP secret"
"$bin" keygen key.txt
# The FCP secret holds the same key: only its owner may read it.
(umask 077 && printf '{"key": "%s"}' "$(cat key.txt)" > input/secret_run_params.json)
chmod 600 input/secret_run_params.json
echo "the key is in $work/key.txt and $work/input/secret_run_params.json (mode 0600): keep it secret;"
echo "whoever reads it can decrypt the architecture and the model"

echo "== 2. the job: NVFlare configs, and the architecture only encrypted"
cp -r "$here/job/pneumonia/config" job/
mkdir -p job/custom
"$bin" encrypt "$here/testdata/pneumonia_spec.json" key.txt job/custom/network.json.enc

echo "== 3. sample data: synthetic chest X-rays, one FCP input folder per site"
"$bin" samples --n 20 --seed 1 data/site-1
"$bin" samples --n 20 --seed 2 data/site-2

echo "== 4. container entrypoint: every *.enc opens with the FCP key"
"$bin" unseal job

echo "== 5. federated training: server + 2 clients over loopback gRPC (the seed's job, wait 0)"
"$bin" simulate job -n 2 --data data --set wait_time_after_min_received=0

echo "== 6. the encrypted model, inspected in memory"
"$bin" pt inspect output/model_parameters.pt.enc | sed -n '1,4p;$p'

echo "== 7. inference at site-1: Model_Score matched to dataset.csv rows by image path"
"$bin" infer --input data/site-1 --key-file key.txt --spec job/custom/network.json.enc output/model_parameters.pt.enc
head -4 output/dataset.csv

echo
echo "encrypted model: $work/output/model_parameters.pt.enc"
echo "inference CSV:   $work/output/dataset.csv"
echo "key (secret):    $work/key.txt, $work/input/secret_run_params.json"
