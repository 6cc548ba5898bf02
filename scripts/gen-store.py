#!/usr/bin/env python3
"""Grows a kbackup store to N hourly backups of one database, for the store-scale
benchmark: every new backup is a hard link to the store's newest real dump (and
its globals), with a manifest that is the real one with its time moved back an
hour per backup. kbackup reads them as it reads real backups.

    scripts/gen-store.py STORE N
"""
import datetime, json, os, sys

store, n = sys.argv[1], int(sys.argv[2])
hourly = os.path.join(store, "hourly")
dumps = sorted(f for f in os.listdir(hourly) if f.endswith(".dump.zst"))
if not dumps:
    sys.exit("gen-store: no backup in %s/hourly to copy; take one first" % store)
src = dumps[-1][: -len(".dump.zst")]
manifest = json.load(open(os.path.join(hourly, src + ".manifest.json")))
prefix = manifest["prefix"]
start = datetime.datetime.fromisoformat(manifest["started_at"])
took = datetime.datetime.fromisoformat(manifest["finished_at"]) - start
for i in range(1, n):
    t = start - datetime.timedelta(hours=i)
    stem = "%s_%s" % (prefix, t.strftime("%Y-%m-%d_%H-%M-%S"))
    for ext in ("dump.zst", "globals.sql"):
        dst = os.path.join(hourly, "%s.%s" % (stem, ext))
        if not os.path.exists(dst):
            os.link(os.path.join(hourly, "%s.%s" % (src, ext)), dst)
    manifest["started_at"] = t.isoformat()
    manifest["finished_at"] = (t + took).isoformat()
    path = os.path.join(hourly, stem + ".manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    os.chmod(path, 0o600)
