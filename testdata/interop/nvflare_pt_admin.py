"""Drives a real NVFlare 2.8 server through its admin API (FLARE API, the provisioned admin
kit's certificates) for testdata/interop/nvflare-pt-server.sh:

  nvflare_pt_admin.py ADMIN_KIT USER JOB_DIR SITES RESULT.json [--job-timeout S] [--register-timeout S]

waits until every site in SITES (comma-separated) has joined, submits JOB_DIR, waits for the job
to finish, asks the system to shut down (without waiting for it), and writes RESULT.json:
{"sites_joined", "job_id", "status", "login_s", "register_s", "submit_s", "job_s", "meta"}. The
file is rewritten after each step, so a failure still tells how far it got ("error" says why).
Exits 0 when the job finished as FINISHED:COMPLETED.
"""
import argparse
import json
import sys
import time

from nvflare.fuel.flare_api.flare_api import new_secure_session


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("admin_kit")
    ap.add_argument("user")
    ap.add_argument("job_dir")
    ap.add_argument("sites")
    ap.add_argument("result")
    ap.add_argument("--job-timeout", type=float, default=600)
    ap.add_argument("--register-timeout", type=float, default=120)
    a = ap.parse_args()
    sites = [s for s in a.sites.split(",") if s]
    res = {}

    def save(**kw):
        res.update(kw)
        with open(a.result, "w") as f:
            json.dump(res, f, indent=1, default=str)

    t0 = time.time()
    try:
        sess = new_secure_session(a.user, a.admin_kit, timeout=60)
    except Exception as e:
        save(error=f"admin login: {type(e).__name__}: {e}")
        return 1
    save(login_s=round(time.time() - t0, 3))
    try:
        t1 = time.time()
        joined = []
        while True:
            joined = sorted(c.name for c in sess.get_system_info().client_info)
            if all(s in joined for s in sites):
                break
            if time.time() - t1 > a.register_timeout:
                save(sites_joined=joined, error=f"sites {sorted(set(sites) - set(joined))} did not join in {a.register_timeout:.0f} s")
                return 1
            time.sleep(0.5)
        save(sites_joined=joined, register_s=round(time.time() - t1, 3))
        t2 = time.time()
        job_id = sess.submit_job(a.job_dir)
        save(job_id=job_id, submit_s=round(time.time() - t2, 3))
        print("submitted", job_id, flush=True)
        meta = {}
        while True:
            meta = sess.get_job_meta(job_id)
            status = str(meta.get("status", ""))
            if status.startswith("FINISHED"):
                break
            if time.time() - t2 > a.job_timeout:
                save(status=status, error=f"job {job_id} not finished after {a.job_timeout:.0f} s")
                return 1
            time.sleep(0.5)
        keep = ("status", "submit_time_iso", "start_time", "duration", "deploy_map", "min_sites", "job_folder_name")
        save(status=status, job_s=round(time.time() - t2, 3), meta={k: meta.get(k) for k in keep if k in meta})
        print("job", job_id, status, flush=True)
        try:
            sess.shutdown("all", wait=False)
        except Exception as e:  # the entry point stops whatever is left
            save(shutdown_error=f"{type(e).__name__}: {e}")
        return 0 if status == "FINISHED:COMPLETED" else 1
    except Exception as e:
        save(error=f"{type(e).__name__}: {e}")
        return 1
    finally:
        try:
            sess.close()
        except Exception:
            pass


if __name__ == "__main__":
    sys.exit(main())
