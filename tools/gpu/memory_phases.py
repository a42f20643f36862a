# nvidia-smi memory log (`--query-gpu=timestamp,memory.used --format=csv,noheader,nounits`) split at
# the load: the peak before the "loaded ... in" line of a gpt-oss-lite log, and after it.
#   python3 tools/gpu/memory_phases.py MEM_LOG RUN_LOG NAME
import sys, re, datetime
mem, log, name = sys.argv[1:4]
fmt = "%Y/%m/%d %H:%M:%S.%f"
rows = [(datetime.datetime.strptime(a, fmt), int(b)) for a, b in (l.strip().split(", ") for l in open(mem) if "," in l)]
loaded = None
for l in open(log):
    l = re.sub(r"\x1b\[[0-9;]*m", "", l)
    if "loaded" in l and " in " in l:
        loaded = datetime.datetime.strptime(l[:26], "%Y-%m-%dT%H:%M:%S.%f")
        secs = l.strip().split(" in ")[-1]
if loaded is None:
    print(name, "no load line"); sys.exit()
load = [m for t, m in rows if t <= loaded]
after = [m for t, m in rows if t > loaded]
print(f"{name}: load {secs}, nvidia-smi peak MiB during load {max(load)}, after load {max(after) if after else '-'}")
