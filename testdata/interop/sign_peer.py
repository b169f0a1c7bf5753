#!/usr/bin/env python3
"""NVFlare's own job signing, for flarego's interop tests.

Usage: sign_peer.py NVFLARE_SRC pki OUT
       sign_peer.py NVFLARE_SRC sign KEY CERT FOLDER
       sign_peer.py NVFLARE_SRC verify FOLDER ROOT_CA

NVFLARE_SRC is a folder holding nvflare/ (the peer tarball, extracted).
pki writes a project's root CA (OUT/rootCA.pem) and an admin's certificate
and key (OUT/admin.crt, OUT/admin.key), made with NVFlare's provisioning
helpers; sign signs every folder under FOLDER as NVFlare's admin console
does before it submits a job; verify prints True or False: whether
NVFlare's verify_folder_signature, the check of a site in secure mode,
accepts FOLDER.
"""
import os
import sys

sys.path.insert(0, sys.argv[1])

from nvflare.lighter.utils import (  # noqa: E402
    Identity,
    generate_cert,
    generate_keys,
    load_private_key_file,
    serialize_cert,
    serialize_pri_key,
    sign_folders,
    verify_folder_signature,
)


def main():
    cmd = sys.argv[2]
    if cmd == "pki":
        out = sys.argv[3]
        root_key, root_pub = generate_keys()
        root = generate_cert(Identity("nvf_peer"), Identity("nvf_peer"), root_key, root_pub, ca=True)
        admin_key, admin_pub = generate_keys()
        admin = generate_cert(Identity("admin@nvidia.com", "nvidia", "project_admin"), Identity("nvf_peer"), root_key, admin_pub)
        for name, data in (("rootCA.pem", serialize_cert(root)), ("admin.crt", serialize_cert(admin)),
                           ("admin.key", serialize_pri_key(admin_key))):
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
        return
    if cmd == "sign":
        sign_folders(sys.argv[5], load_private_key_file(sys.argv[3]), sys.argv[4])
        return
    if cmd == "verify":
        print(verify_folder_signature(sys.argv[3], sys.argv[4]))
        return
    sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
