#!/usr/bin/env bash
# Builds the test and benchmark binaries here and gathers what a GPU host needs into
# .device/ (git-ignored): the binaries, the converted student model and the training
# project's float64 references. Then `device run` benches/gpu/run_on_device.sh with
# carry [".device"].
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/bin .device/models .device/shared/reference
cargo build --release --bin painn
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".device/bin/test-" + m["target"]["name"])
'
cp target/release/painn .device/bin/painn
strip .device/bin/* 2>/dev/null || true
cp target/models/student_427k.safetensors .device/models/
shared=${PAINN_SHARED_DIR:-../shared}
cp "$shared/reference/seed_reference_f64.json" .device/shared/reference/
du -sh .device
