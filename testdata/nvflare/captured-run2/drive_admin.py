"""Drives NVFlare 2.0.5's admin server through two runs with FLAdminAPI.

Usage: python3 drive_admin.py HOST PORT UPLOAD_DIR APP
Runs APP as run 1 and then again as run 2 (set_run_number 2, deploy_app,
start_app), waiting for the server's engine to stop after each, then
shuts the system down.
"""
import sys
import time

from nvflare.fuel.hci.client.fl_admin_api import FLAdminAPI
from nvflare.fuel.hci.client.fl_admin_api_spec import TargetType

host, port, upload, app = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
api = FLAdminAPI(host=host, port=port, upload_dir=upload, download_dir=upload, poc=True)
print("login", api.login_with_password("admin", "admin"), flush=True)


def wait_clients(n):
    for _ in range(120):
        r = api.check_status(TargetType.SERVER)
        if (r["details"].get("registered_clients") or 0) >= n:
            return
        time.sleep(1)
    sys.exit("clients did not register")


def wait_stopped():
    time.sleep(3)
    for _ in range(300):
        r = api.check_status(TargetType.SERVER)
        if r["details"].get("server_engine_status") == "stopped":
            return
        time.sleep(1)
    sys.exit("run did not stop")


wait_clients(2)
print("upload", api.upload_app(app), flush=True)
for run in (1, 2):
    print("set_run_number", run, api.set_run_number(run), flush=True)
    print("deploy", api.deploy_app(app, TargetType.ALL), flush=True)
    print("start", api.start_app(TargetType.ALL), flush=True)
    wait_stopped()
    print("run", run, "status", api.check_status(TargetType.CLIENT), flush=True)
print("shutdown", api.shutdown(TargetType.ALL), flush=True)
