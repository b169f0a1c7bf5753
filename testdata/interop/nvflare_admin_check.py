"""NVFlare's own flare_api against a server that restarted after running a job.

Usage: nvflare_admin_check.py ADMIN_KIT JOB_DIR JOB_ID EXPECTED_JSON

JOB_ID is a job the server ran to FINISHED:COMPLETED before it restarted;
EXPECTED_JSON the global model it saved (models/server.npy in its workspace).
With no site connected, the script checks through flare_api (certificate
login): the job is still in the job store after the restart, its meta,
download_job_result (meta.json, the job as submitted, its workspace with the
model), list_jobs filters, a new submission that waits for sites and is
aborted then deleted, errors for unknown jobs, check_status and sys_info,
then shuts the server down. It prints one line per check and
RESULT {json}; the exit code is 0 when every check passed.
"""
import json
import os
import sys
import time

import numpy as np
from nvflare.fuel.flare_api.flare_api import new_secure_session

admin_kit, job_dir, job_id, expected = sys.argv[1:5]
expected = json.loads(expected)
failures = []
result = {}


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + str(detail)[:600]), flush=True)
    if not ok:
        failures.append(name)


def raises(f, *a):
    try:
        f(*a)
    except Exception as e:
        return type(e).__name__
    return None


t0 = time.time()
sess = new_secure_session("admin@nvidia.com", admin_kit, timeout=30)
result["login_s"] = round(time.time() - t0, 3)
try:
    jobs = sess.list_jobs()
    mine = [j for j in jobs if j.get("job_id") == job_id]
    check("list_jobs keeps the job across the restart", len(mine) == 1 and mine[0]["status"] == "FINISHED:COMPLETED", jobs)
    meta = sess.get_job_meta(job_id)
    check("get_job_meta", meta.get("status") == "FINISHED:COMPLETED" and meta.get("job_id") == job_id, meta)
    check("list_jobs -n prefix", len(sess.list_jobs(name_prefix="hello")) >= 1 and not sess.list_jobs(name_prefix="zzz"))
    check("list_jobs by id prefix", [j["job_id"] for j in sess.list_jobs(id_prefix=job_id[:8])] == [job_id])
    detailed = sess.list_jobs(detailed=True)
    check("list_jobs -d", any(j.get("job_id") == job_id and "deploy_map" in j for j in detailed), detailed)

    t = time.time()
    loc = sess.download_job_result(job_id)
    result["download_s"] = round(time.time() - t, 3)
    files = sorted(os.path.relpath(os.path.join(r, f), loc) for r, _, fs in os.walk(loc) for f in fs)
    result["downloaded"] = files
    model = os.path.join(loc, "workspace", "models", "server.npy")
    got = np.load(model).tolist() if os.path.exists(model) else None
    check("download_job_result: the workspace holds the global model", got == expected, (got, files))
    check("download_job_result: the job as submitted",
          os.path.exists(os.path.join(loc, "job", os.path.basename(job_dir), "meta.json")), files)
    with open(os.path.join(loc, "meta.json")) as f:
        check("download_job_result: meta.json", json.load(f).get("job_id") == job_id)

    # No site is connected: a new job waits, is aborted, then deleted.
    new_id = sess.submit_job(job_dir)
    check("submit_job with no sites waits", sess.get_job_meta(new_id)["status"] == "SUBMITTED")
    sess.abort_job(new_id)
    check("abort_job before it ran", sess.get_job_meta(new_id)["status"] == "FINISHED:ABORTED")
    sess.delete_job(new_id)
    check("delete_job", raises(sess.get_job_meta, new_id) == "JobNotFound")
    check("get_job_meta of an unknown job", raises(sess.get_job_meta, "00000000-0000-4000-8000-000000000000") == "JobNotFound")
    check("download of an unknown job", raises(sess.download_job_result, "nosuchjob") is not None)

    st = sess.check_status("server")
    check("check_status server", "server_status" in str(st) or "stopped" in str(st), st)
    si = sess.do_command("sys_info server")
    check("sys_info server", "total" in json.dumps(si), si)
    sess.shutdown("server")
    result["shutdown"] = "ok"
except Exception as e:
    check("no exception", False, f"{type(e).__name__}: {e}")
finally:
    try:
        sess.close()
    except Exception:
        pass
result["failures"] = failures
print("RESULT " + json.dumps(result), flush=True)
sys.exit(1 if failures else 0)
