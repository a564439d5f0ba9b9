#!/usr/bin/env bash
# speedrun.sh: the whole lmscratch pipeline in one command, from raw web pages to an RL-tuned model and a report.
#
# What nanochat's speedrun does on 8xH100 with internet, on ONE GPU and offline (8.5 minutes of stages on an H100:
# results/speedrun_gpu.md), or on a CPU in minutes. Every step is a plain command of the project's own scripts,
# in the order of CS336:
#   1) data       cc_filter.py (language ID, Gopher rules, PII masks) + dedup.py (exact lines, then MinHash
#                 near-duplicates) on a crawl; sft.py's synthetic arithmetic task; a pycode source folder
#   2) tokenizer  bpe.py trained on the kept web text; data/docs/prepare.py and data/pycode/prepare.py encode
#                 the corpora with it; one token folder (train.bin, val.bin, meta.json) that train.py reads
#   3) pretrain   train.py (periodic validation, bits per byte, a sample at the end)
#   4) sft        sft.py --mode=sft on worked traces in the <think>/<answer> format, from the pre-trained model
#   5) grpo       grpo.py from the SFT model, rewards from the r1_zero grader
#   6) eval       held-out task accuracy and format rate of base -> SFT -> GRPO; GSM8K through the same grader
#   7) report     report.md: a table per stage, loss curves, accuracies, wall-clock, device and versions
#
# Run:
#   bash speedrun.sh                    # GPU profile when CUDA is there (else the CPU one)
#   bash speedrun.sh --cpu              # tiny sizes: the whole chain in <= 10 minutes on 2 cores
#   bash speedrun.sh --gpu24            # a 24 GB GPU: smaller micro-batches + gradient accumulation, same batch
#   bash speedrun.sh --nproc=8          # pre-training under torchrun on 8 GPUs (same global batch)
#   bash speedrun.sh --until=pretrain   # stop after a stage (drive a long run in pieces: each stage <= 10 min)
#   bash speedrun.sh --crawl='crawl/*.warc.gz' --run_dir=runs/mine --fresh
# Options: --cpu | --gpu24 | --tiny (test size, seconds) | --nproc=N | --until=STAGE | --fresh | --run_dir=DIR
#          (default runs/speedrun-<profile>) | --crawl=GLOB (default $LMSCRATCH_DATA/a4/docs_crawl.warc.gz)
#          | --pysrc=DIR (pycode source folder; default: the running Python's environment on GPU, a seeded
#          sample of its standard library on CPU) | --publish=PREFIX (also write PREFIX.md and PREFIX_*.png)
#
# Stages stay < 10 minutes each, so a run can be driven in calls of < 10 minutes (e.g. --until=sft, then the rest);
# measured on an H100, the whole chain took 8.5 minutes of stages (another H100 host was 13-53% slower per stage);
# the run folder must survive between calls.
# Resume: every stage writes into <run_dir>/<stage>/ and writes <stage>/DONE last; a finished stage is skipped,
# a stage folder without DONE (interrupted) is wiped and redone. <run_dir>/config.env records the sizes: a run
# folder made with another configuration is refused unless --fresh. Logs: <run_dir>/logs/<stage>.jsonl (one
# event per command: the command, exit code, seconds) and <stage>.log (the commands' own output).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
DATA="${LMSCRATCH_DATA:-$ROOT/../shared/data}"
DATA="$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")"  # absolute: every command sees the same folder
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || PY=python3  # some machines (the GPU image) only have python3
STAGES=(data tokenizer pretrain sft grpo eval report)

die() { echo "speedrun: error: $*" >&2; exit 2; }

# -----------------------------------------------------------------------------
# Command line
PROFILE='' RUN_DIR='' CRAWL="$DATA/a4/docs_crawl.warc.gz" PYSRC='' UNTIL='report' FRESH=0 NPROC=1 PUBLISH=''
for arg in "$@"; do
    case "$arg" in
        --cpu) PROFILE=cpu ;;
        --gpu) PROFILE=gpu ;;
        --gpu24) PROFILE=gpu24 ;;
        --tiny) PROFILE=tiny ;;
        --fresh) FRESH=1 ;;
        --nproc=*) NPROC="${arg#*=}" ;;
        --until=*) UNTIL="${arg#*=}" ;;
        --run_dir=*) RUN_DIR="${arg#*=}" ;;
        --crawl=*) CRAWL="${arg#*=}" ;;
        --pysrc=*) PYSRC="${arg#*=}" ;;
        --publish=*) PUBLISH="${arg#*=}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$ROOT/speedrun.sh" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$arg' (see bash speedrun.sh --help)" ;;
    esac
done
[[ " ${STAGES[*]} " == *" $UNTIL "* ]] || die "--until=$UNTIL: give one of ${STAGES[*]}"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--nproc=$NPROC: give a positive integer"
if [[ -z "$PROFILE" ]]; then
    if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        PROFILE=gpu
    else
        PROFILE=cpu
        echo "speedrun: no CUDA device: running the CPU profile (--cpu)"
    fi
fi
RUN_DIR="${RUN_DIR:-runs/speedrun-$PROFILE}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

# -----------------------------------------------------------------------------
# Profiles: every size of the run. The GPU profile is budgeted for one H100 (80 GB): each stage < 10 minutes,
# the whole run 8.5 minutes of stages (measured). Stages that loop are capped by time (train.py max_time_s,
# grpo.py time_budget_s).
case "$PROFILE" in
gpu|gpu24)
    DEVICE=cuda DTYPE=bfloat16 COMPILE=True
    PYSRC_MB=0            # 0 = data/pycode/prepare.py's default: every .py of the running Python (~390 MB on the H100)
    VOCAB=16384           # the pycode corpus's choice (results/data.md): 16K balances tokens saved vs output layer
    # the task (sft.py's synthetic arithmetic word problems): 2-3 operations on numbers up to 20
    TASK_N_TRAIN=60000 TASK_N_VAL=500 TASK_MIN_STEPS=2 TASK_MAX_STEPS=3 TASK_MAX_NUMBER=20
    TASK_REPEAT=4         # the task's worked solutions enter pre-training this many times (13.5% of the tokens)
    # pre-training: the A1 shape made 6 layers deep (4x512 is ANCHORS' 300-s shape; arithmetic likes depth)
    D_MODEL=512 N_LAYERS=6 N_HEADS=8 D_FF=1344 CTX=256 BATCH=128 ACCUM=1
    # 11,000 x 32,768 = 360M tokens: 254 s at 1.79M tokens/s (measured, results/speedrun_gpu.md; the A1 shape
    # runs at 2.56M tokens/s on the H100, results/train_throughput.md; 6 layers and a 16K vocabulary cost ~1.5x
    # the FLOPs per token)
    MAX_ITERS=11000
    MAX_TIME_S=330        # ... and a hard stop (compilation included) so the stage stays < 6.5 minutes
    LR=1.5e-3 MIN_LR=1.5e-4 WARMUP=300 EVAL_INTERVAL=2000 EVAL_ITERS=20 LOG_INTERVAL=100 OPTIMIZER=torch_adamw
    SAMPLE_TOKENS=128
    # SFT: 480 gold traces (15 steps x 32), short on purpose: the format is learnt in ~10 steps, and RL needs a
    # policy that is right only some of the time (grpo.py's demo stops its SFT early for the same reason). Measured
    # on the H100: 60 steps gave 87.8% held-out accuracy and GRPO then had nothing left to gain (82.6% after it)
    SFT_EXAMPLES=20000 SFT_ITERS=15 SFT_BATCH=32 SFT_ACCUM=1 SFT_LR=3e-4 SFT_WARMUP=5
    SFT_EVAL_INTERVAL=5 SFT_EVAL_N=200
    # GRPO: 256 rollouts = 32 questions x 8 at temperature 0.7, on-policy, <= 280 s so that grpo + eval + report fit
    # one 10-minute call. lr 3e-5 after a 25-step warm-up, measured on the H100 (results/speedrun_gpu.md): grpo.py's
    # demo lr 1e-4 first halved the SFT policy's accuracy (76% -> 50%), and even after a warm-up it wandered between
    # 67% and 82%; at 3e-5 it climbed smoothly from 75% to 93-96.5% (results/speedrun_gpu_lr3e-5.md)
    GRPO_STEPS=500 GRPO_TIME_S=280 GRPO_ROLLOUT=256 GRPO_GROUP=8 GRPO_TRAIN_BATCH=256 GRPO_ACCUM=2
    GRPO_LR=3e-5 GRPO_WARMUP=25 GRPO_TEMP=0.7 GRPO_EVAL_INTERVAL=25 GRPO_EVAL_N=256
    MAX_NEW=96 GEN_BATCH=512 GSM8K_N=300 GSM8K_MODELS="base sft grpo"
    if [[ "$PROFILE" == gpu24 ]]; then  # same global batches, 4x smaller micro-batches
        BATCH=32 ACCUM=4 SFT_ACCUM=4 GRPO_ACCUM=8 GEN_BATCH=256
    fi ;;
cpu)
    DEVICE=cpu DTYPE=float32 COMPILE=False
    PYSRC_MB=4
    VOCAB=2048
    TASK_N_TRAIN=4000 TASK_N_VAL=100 TASK_MIN_STEPS=1 TASK_MAX_STEPS=1 TASK_MAX_NUMBER=9 TASK_REPEAT=4
    D_MODEL=128 N_LAYERS=4 N_HEADS=4 D_FF=0 CTX=128 BATCH=16 ACCUM=1 MAX_ITERS=600 MAX_TIME_S=150
    LR=3e-3 MIN_LR=3e-4 WARMUP=30 EVAL_INTERVAL=150 EVAL_ITERS=10 LOG_INTERVAL=25 OPTIMIZER=adamw SAMPLE_TOKENS=64
    SFT_EXAMPLES=2000 SFT_ITERS=30 SFT_BATCH=16 SFT_ACCUM=1 SFT_LR=1e-3 SFT_WARMUP=3
    SFT_EVAL_INTERVAL=-1 SFT_EVAL_N=50
    GRPO_STEPS=200 GRPO_TIME_S=60 GRPO_ROLLOUT=64 GRPO_GROUP=8 GRPO_TRAIN_BATCH=64 GRPO_ACCUM=1
    GRPO_LR=1e-4 GRPO_WARMUP=0 GRPO_TEMP=0.7 GRPO_EVAL_INTERVAL=-1 GRPO_EVAL_N=50
    MAX_NEW=32 GEN_BATCH=128 GSM8K_N=10 GSM8K_MODELS="grpo" ;;
tiny)  # the test's size: every stage in seconds; shows the chain works, not what it learns
    DEVICE=cpu DTYPE=float32 COMPILE=False
    PYSRC_MB=0.3
    VOCAB=512
    TASK_N_TRAIN=200 TASK_N_VAL=16 TASK_MIN_STEPS=1 TASK_MAX_STEPS=1 TASK_MAX_NUMBER=9 TASK_REPEAT=1
    D_MODEL=32 N_LAYERS=2 N_HEADS=2 D_FF=0 CTX=128 BATCH=8 ACCUM=1 MAX_ITERS=16 MAX_TIME_S=30
    LR=3e-3 MIN_LR=3e-4 WARMUP=5 EVAL_INTERVAL=8 EVAL_ITERS=2 LOG_INTERVAL=4 OPTIMIZER=adamw SAMPLE_TOKENS=16
    SFT_EXAMPLES=50 SFT_ITERS=4 SFT_BATCH=8 SFT_ACCUM=1 SFT_LR=1e-3 SFT_WARMUP=1
    SFT_EVAL_INTERVAL=-1 SFT_EVAL_N=16
    GRPO_STEPS=2 GRPO_TIME_S=30 GRPO_ROLLOUT=16 GRPO_GROUP=4 GRPO_TRAIN_BATCH=16 GRPO_ACCUM=1
    GRPO_LR=3e-4 GRPO_WARMUP=0 GRPO_TEMP=0.7 GRPO_EVAL_INTERVAL=-1 GRPO_EVAL_N=16
    MAX_NEW=16 GEN_BATCH=64 GSM8K_N=2 GSM8K_MODELS="grpo" ;;
*) die "unknown profile $PROFILE" ;;
esac
NW=0  # worker processes of the data scripts: 0 = all cores
# CPU profiles: one torch thread per process. Small models gain little from a second thread, and on a busy machine
# OpenMP threads that wait for each other made a training step 5-7x slower (3.8 s vs 0.6 s per step here)
[[ "$DEVICE" == cpu ]] && export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# torchrun keeps the global batch: gradient_accumulation_steps is the count over all ranks (train.py)
if (( NPROC > 1 )); then
    if (( ACCUM % NPROC != 0 )); then
        (( BATCH * ACCUM % NPROC == 0 )) || die "--nproc=$NPROC does not divide the global batch of $((BATCH * ACCUM))"
        BATCH=$(( BATCH * ACCUM / NPROC )) ACCUM=$NPROC
    fi
fi
TRAIN_LAUNCH=("$PY")
(( NPROC > 1 )) && TRAIN_LAUNCH=(torchrun --standalone "--nproc_per_node=$NPROC")

# The crawl: a glob (or comma-separated globs) that must name at least one non-empty file
shopt -s nullglob
CRAWL_FILES=()
IFS=',' read -r -a _globs <<< "$CRAWL"
for g in "${_globs[@]}"; do for f in $g; do [[ -f "$f" ]] && CRAWL_FILES+=("$f"); done; done
shopt -u nullglob
if (( FRESH )) || [[ ! -f "$RUN_DIR/data/DONE" ]]; then
    (( ${#CRAWL_FILES[@]} )) || die "--crawl='$CRAWL' matches no file. Give a glob of WARC/WET files (quoted), e.g.
  --crawl='../shared/data/a4/*.warc.gz', or set LMSCRATCH_DATA to the shared data folder (now: $DATA)"
    for f in "${CRAWL_FILES[@]}"; do [[ -s "$f" ]] || die "crawl file '$f' is empty"; done
fi

# -----------------------------------------------------------------------------
# The configuration of this run folder: a folder made with other sizes or inputs is refused (unless --fresh)
CONFIG_VARS=(PROFILE CRAWL PYSRC PYSRC_MB VOCAB TASK_N_TRAIN TASK_N_VAL TASK_MIN_STEPS TASK_MAX_STEPS
    TASK_MAX_NUMBER TASK_REPEAT D_MODEL N_LAYERS N_HEADS D_FF CTX BATCH ACCUM MAX_ITERS MAX_TIME_S LR MIN_LR WARMUP
    EVAL_INTERVAL EVAL_ITERS OPTIMIZER SAMPLE_TOKENS DEVICE DTYPE COMPILE NPROC SFT_EXAMPLES SFT_ITERS SFT_BATCH
    SFT_ACCUM SFT_LR
    SFT_WARMUP SFT_EVAL_INTERVAL SFT_EVAL_N GRPO_STEPS GRPO_TIME_S GRPO_ROLLOUT GRPO_GROUP GRPO_TRAIN_BATCH
    GRPO_ACCUM GRPO_LR GRPO_WARMUP GRPO_TEMP GRPO_EVAL_INTERVAL GRPO_EVAL_N MAX_NEW GSM8K_N GSM8K_MODELS)
config_text() { for v in "${CONFIG_VARS[@]}"; do printf '%s=%s\n' "$v" "${!v}"; done; }
if (( FRESH )); then
    # only what this script writes: never a folder that is not a speedrun's
    [[ -z "$(ls -A "$RUN_DIR")" || -f "$RUN_DIR/config.env" ]] || \
        die "--fresh: $RUN_DIR is not empty and has no config.env: not a speedrun folder, not wiping it"
    rm -rf "${RUN_DIR:?}"/*
fi
if [[ -f "$RUN_DIR/config.env" ]]; then
    if ! diff <(config_text) "$RUN_DIR/config.env" >/dev/null; then
        echo "speedrun: $RUN_DIR was made with another configuration (< now, > that run):" >&2
        diff <(config_text) "$RUN_DIR/config.env" | grep '^[<>]' >&2 || true
        die "rerun with --fresh to start over there, or give another --run_dir"
    fi
else
    [[ -z "$(ls -A "$RUN_DIR")" ]] || die "$RUN_DIR is not empty and has no config.env: give an empty or new --run_dir"
    config_text > "$RUN_DIR/config.env.tmp" && mv "$RUN_DIR/config.env.tmp" "$RUN_DIR/config.env"
fi

# -----------------------------------------------------------------------------
# Stage machinery: logs, commands, DONE markers
LOGS="$RUN_DIR/logs"
mkdir -p "$LOGS"
json_str() {  # a bash string as a JSON string literal
    local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//$'\n'/\\n}"; s="${s//$'\t'/\\t}"; s="${s//$'\r'/}"
    printf '"%s"' "$s"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log_event() { printf '{"time": "%s", "stage": "%s", %s}\n' "$(date -u +%FT%TZ)" "$STAGE" "$1" >> "$LOGS/$STAGE.jsonl"; }

# run CMD ARGS...: run one command of the current stage, its output to the terminal and to logs/<stage>.log,
# one JSONL event with the command line, exit code and seconds. A failure stops the whole run, naming the stage.
run() {
    local t0 rc cmd
    t0="$(now)"
    cmd="$(printf '%q ' "$@")"
    echo "+ ${cmd% }" | tee -a "$LOGS/$STAGE.log"
    set +e
    "$@" 2>&1 | tee -a "$LOGS/$STAGE.log"
    rc=${PIPESTATUS[0]}
    set -e
    log_event "\"event\": \"command\", \"cmd\": $(json_str "${cmd% }"), \"rc\": $rc, \"wall_s\": $(elapsed "$t0")"
    if (( rc != 0 )); then
        log_event "\"event\": \"failed\", \"rc\": $rc"
        echo "speedrun: stage '$STAGE' FAILED (exit code $rc) running: ${cmd% }" >&2
        echo "speedrun: its log: $LOGS/$STAGE.log (events: $LOGS/$STAGE.jsonl); finished stages are kept in $RUN_DIR;" \
             "rerun the same command to resume at stage '$STAGE'" >&2
        exit 1
    fi
}

# stage NAME: run stage_NAME unless NAME/DONE exists; a folder without DONE is a half-done stage: wipe, redo
stage() {
    STAGE="$1"
    local dir="$RUN_DIR/$STAGE" t0
    if [[ -f "$dir/DONE" ]]; then
        echo "== speedrun: stage '$STAGE' already done ($dir/DONE), skipped"
    else
        if [[ -d "$dir" ]]; then
            echo "== speedrun: stage '$STAGE' was interrupted: redoing it from scratch"
            rm -rf "$dir"
        fi
        mkdir -p "$dir"
        : > "$LOGS/$STAGE.log"
        : > "$LOGS/$STAGE.jsonl"
        echo "== speedrun: stage '$STAGE' ($PROFILE profile) -> $dir"
        t0="$(now)"
        log_event "\"event\": \"start\", \"profile\": \"$PROFILE\""
        "stage_$STAGE" "$dir"
        local wall; wall="$(elapsed "$t0")"
        log_event "\"event\": \"done\", \"wall_s\": $wall"
        printf '{"stage": "%s", "wall_s": %s, "finished": "%s"}\n' "$STAGE" "$wall" "$(date -u +%FT%TZ)" \
            > "$dir/DONE.tmp"
        mv "$dir/DONE.tmp" "$dir/DONE"  # written last: only now is the stage done
        echo "== speedrun: stage '$STAGE' done in ${wall}s"
    fi
    if [[ "$STAGE" == "$UNTIL" && "$UNTIL" != report ]]; then
        echo "speedrun: stopping after stage '$UNTIL' (--until); rerun without --until (same options) to go on"
        exit 0
    fi
}

D="$RUN_DIR/data" T="$RUN_DIR/tokenizer" P="$RUN_DIR/pretrain" S="$RUN_DIR/sft" G="$RUN_DIR/grpo" E="$RUN_DIR/eval"
TOK="$T/tokenizer"
export PYTHONUNBUFFERED=1 LMSCRATCH_DATA="$DATA"

# -----------------------------------------------------------------------------
# 1) Data: crawl -> cc_filter.py -> one file per page -> exact line dedup -> MinHash dedup -> web.txt;
#    the synthetic task (problems, worked traces, held-out set); the pycode source folder
stage_data() {
    local d="$1"
    run "$PY" cc_filter.py --input="$CRAWL" --out_dir="$d/cc" --tokenize=False --num_workers=$NW
    # dedup.py works on one file per document (exact line dedup counts lines across the whole corpus)
    run "$PY" - "$d/cc/docs" "$d/pages" <<'EOF'
import glob, json, os, sys
src, dst = sys.argv[1:3]
os.makedirs(dst, exist_ok=True)
n = 0
for path in sorted(glob.glob(os.path.join(src, '*.jsonl'))):
    with open(path, encoding='utf-8') as f:
        for line in f:
            n += 1
            with open(os.path.join(dst, f'{n:07d}.txt'), 'w', encoding='utf-8') as out:
                out.write(json.loads(line)['text'])
print(f"{n} kept pages -> {dst}/*.txt")
EOF
    run "$PY" dedup.py --mode=exact --inputs="$d/pages" --output_dir="$d/lines" --num_workers=$NW --progress=False
    run "$PY" dedup.py --mode=minhash --inputs="$d/lines" --output_dir="$d/dedup" --num_workers=$NW --progress=False
    # the surviving pages, '<|endoftext|>' between documents (what data/docs/prepare.py reads); counts per step
    run "$PY" - "$d" <<'EOF'
import glob, json, os, sys
d = sys.argv[1]
def folder(name):
    files = sorted(glob.glob(os.path.join(d, name, '*.txt')))
    texts = [open(p, encoding='utf-8').read() for p in files]
    return texts, {'docs': len(texts), 'nonempty_docs': sum(bool(t.strip()) for t in texts),
                   'lines': sum(len(t.splitlines()) for t in texts), 'bytes': sum(len(t.encode()) for t in texts)}
stats = {name: folder(name)[1] for name in ('pages', 'lines')}
texts, stats['dedup'] = folder('dedup')
docs = [t.strip() for t in texts if t.strip()]
if not docs:
    sys.exit(f"no page of the crawl survived the filters and deduplication ({stats['pages']['docs']} kept by "
             f"cc_filter.py, see {d}/cc/report.json): give a crawl with English text")
with open(os.path.join(d, 'web.txt.tmp'), 'w', encoding='utf-8') as f:
    f.write('\n<|endoftext|>\n'.join(docs))
os.replace(os.path.join(d, 'web.txt.tmp'), os.path.join(d, 'web.txt'))
stats['web'] = {'docs': len(docs), 'bytes': sum(len(t.encode()) for t in docs)}
json.dump(stats, open(os.path.join(d, 'dedup_stats.json'), 'w'), indent=1)
print(json.dumps(stats, indent=1))
EOF
    # the task: sft.py writes problems with worked traces (task_sft.jsonl), held-out problems (task_val.jsonl) and
    # the same training problems as plain text (task_pretrain.jsonl: 'Question/Solution/Answer', no tags)
    mkdir -p "$d/task"
    printf 'User: {question}\nAssistant: <think>' > "$d/task/template.txt"  # r1_zero's ending, no preamble
    run "$PY" sft.py --mode=make_data --out_dir="$d/task" --prompt_template="$d/task/template.txt" \
        --task_n_train=$TASK_N_TRAIN --task_n_val=$TASK_N_VAL --task_min_steps=$TASK_MIN_STEPS \
        --task_max_steps=$TASK_MAX_STEPS --task_max_number=$TASK_MAX_NUMBER --device=cpu
    run "$PY" - "$d/task" <<'EOF'
import json, os, sys
d = sys.argv[1]
docs = [json.loads(l)['text'].strip() for l in open(os.path.join(d, 'task_pretrain.jsonl'), encoding='utf-8')]
with open(os.path.join(d, 'task.txt.tmp'), 'w', encoding='utf-8') as f:
    f.write('\n<|endoftext|>\n'.join(docs))
os.replace(os.path.join(d, 'task.txt.tmp'), os.path.join(d, 'task.txt'))
print(f"{len(docs)} worked solutions -> {d}/task.txt")
EOF
    # pycode: on the CPU profiles a seeded-order sample of the standard library (the whole environment is ~270 MB
    # here); data/pycode/prepare.py applies its own rules (exact + near dedup, SHA-1 validation split) in stage 2
    if [[ -z "$PYSRC" && "$PYSRC_MB" != 0 ]]; then
        run "$PY" - "$d/pysrc" "$PYSRC_MB" <<'EOF'
import hashlib, os, shutil, sys, sysconfig
dst, mb = sys.argv[1], float(sys.argv[2])
root = sysconfig.get_paths()['stdlib']
files = sorted(os.path.join(dp, f) for dp, dn, fs in os.walk(root) for f in fs
               if f.endswith('.py') and 'site-packages' not in dp)
files.sort(key=lambda p: hashlib.sha1(p.encode()).hexdigest())  # a fixed, spread-out order over the folders
size, n, n_val = 0, 0, 0
for p in files:
    data = open(p, 'rb').read()
    if not data:
        continue
    is_val = hashlib.sha1(data).digest()[0] % 100 == 0  # prepare.py's validation rule: we need some of each
    if size >= mb * 1e6:  # enough bytes: only look for validation files until there are 2
        if n_val >= 2:
            break
        if not is_val:
            continue
    out = os.path.join(dst, os.path.relpath(p, root))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(p, out)
    size, n, n_val = size + len(data), n + 1, n_val + is_val
print(f"pycode sample: {n} files ({n_val} in validation), {size / 1e6:.1f} MB of {root} -> {dst}")
EOF
    fi
}

# 2) Tokenizer: bpe.py on the kept web text; every corpus encoded with it; one token folder for train.py
stage_tokenizer() {
    local t="$1" pysrc="$PYSRC"
    [[ -z "$pysrc" && -d "$D/pysrc" ]] && pysrc="$D/pysrc"
    run "$PY" bpe.py --input="$D/web.txt" --vocab_size=$VOCAB --out_dir="$t/tokenizer" --num_workers=$NW
    run "$PY" data/docs/prepare.py --src="$D/web.txt" --out_dir="$t/web" --tokenizer_dir="$t/tokenizer" \
        --num_workers=$NW --progress=False
    run "$PY" data/docs/prepare.py --src="$D/task/task.txt" --out_dir="$t/task" --tokenizer_dir="$t/tokenizer" \
        --num_workers=$NW --progress=False
    run "$PY" data/pycode/prepare.py --src="$pysrc" --out_dir="$t/pycode" --tokenizer_dir="$t/tokenizer" \
        --num_workers=$NW --progress=False
    # one folder: train = web + pycode + task (x TASK_REPEAT); val = web + pycode (natural text: bits/byte)
    run "$PY" - "$t" "$TASK_REPEAT" <<'EOF'
import json, os, sys
import numpy as np
t, repeat = sys.argv[1], int(sys.argv[2])
metas = {c: json.load(open(os.path.join(t, c, 'meta.json'))) for c in ('web', 'pycode', 'task')}
dtype = metas['web']['dtype']
os.makedirs(os.path.join(t, 'tokens'), exist_ok=True)
parts = {'train': [('web', 1), ('pycode', 1), ('task', repeat)], 'val': [('web', 1), ('pycode', 1)]}
sizes = {}
for split, plan in parts.items():
    out = os.path.join(t, 'tokens', f'{split}.bin')
    with open(out + '.tmp', 'wb') as f:
        for corpus, k in plan:
            arr = np.fromfile(os.path.join(t, corpus, f'{split}.bin'), dtype=dtype)
            for _ in range(k):
                arr.tofile(f)
            sizes[f'{split}_{corpus}'] = int(len(arr)) * k
    os.replace(out + '.tmp', out)
val_bytes = sum(metas[c]['splits']['val']['bytes'] for c in ('web', 'pycode'))
meta = {'vocab_size': metas['web']['vocab_size'], 'dtype': dtype, 'eot_id': metas['web']['eot_id'],
        'tokenizer_dir': os.path.abspath(os.path.join(t, 'tokenizer')), 'val_bytes': val_bytes,
        'tokens': sizes, 'task_repeat': repeat,
        'sources': {c: {k: m[k] for k in ('splits', 'bytes_per_token') if k in m} for c, m in metas.items()}}
with open(os.path.join(t, 'tokens', 'meta.json.tmp'), 'w') as f:
    json.dump(meta, f, indent=1)
os.replace(os.path.join(t, 'tokens', 'meta.json.tmp'), os.path.join(t, 'tokens', 'meta.json'))
print(json.dumps(sizes, indent=1))
EOF
}

# 3) Pre-training
stage_pretrain() {
    local p="$1"
    run "${TRAIN_LAUNCH[@]}" train.py --data_dir="$T/tokens" --out_dir="$p/out" --device=$DEVICE --dtype=$DTYPE \
        --compile=$COMPILE --d_model=$D_MODEL --num_layers=$N_LAYERS --num_heads=$N_HEADS --d_ff=$D_FF \
        --context_length=$CTX --batch_size=$BATCH --gradient_accumulation_steps=$ACCUM --max_iters=$MAX_ITERS \
        --max_time_s=$MAX_TIME_S --learning_rate=$LR --min_lr=$MIN_LR --warmup_iters=$WARMUP \
        --eval_interval=$EVAL_INTERVAL --eval_iters=$EVAL_ITERS --log_interval=$LOG_INTERVAL --optimizer=$OPTIMIZER \
        --prompt='Question: ' --max_new_tokens=$SAMPLE_TOKENS
}

# 4) SFT on gold traces in the <think>/<answer> format (our BPE: the tokenizer folder is passed explicitly, and
#    sft.py stores it in its checkpoint for grpo.py)
stage_sft() {
    local s="$1"
    run "$PY" sft.py --mode=sft --init_from="$P/out/ckpt.pt" --tokenizer_dir="$TOK" --out_dir="$s/out" \
        --device=$DEVICE --dtype=$DTYPE --train_path="$D/task/task_sft.jsonl" --val_path="$D/task/task_val.jsonl" \
        --prompt_template="$D/task/template.txt" --n_train_examples=$SFT_EXAMPLES --max_iters=$SFT_ITERS \
        --batch_size=$SFT_BATCH --gradient_accumulation_steps=$SFT_ACCUM --learning_rate=$SFT_LR \
        --warmup_iters=$SFT_WARMUP --eval_interval=$SFT_EVAL_INTERVAL --eval_n=$SFT_EVAL_N \
        --max_new_tokens=$MAX_NEW --gen_batch_size=$GEN_BATCH --log_interval=10
}

# 5) GRPO from the SFT model on the task's training questions
stage_grpo() {
    local g="$1"
    run "$PY" grpo.py --init_from="$S/out/ckpt.pt" --tokenizer_dir="$TOK" --out_dir="$g/out" --device=$DEVICE \
        --dtype=$DTYPE --train_path="$D/task/task_sft.jsonl" --val_path="$D/task/task_val.jsonl" \
        --prompt_template="$D/task/template.txt" --n_grpo_steps=$GRPO_STEPS --time_budget_s=$GRPO_TIME_S \
        --rollout_batch_size=$GRPO_ROLLOUT --group_size=$GRPO_GROUP --train_batch_size=$GRPO_TRAIN_BATCH \
        --gradient_accumulation_steps=$GRPO_ACCUM --learning_rate=$GRPO_LR --warmup_steps=$GRPO_WARMUP \
        --sampling_temperature=$GRPO_TEMP --sampling_max_tokens=$MAX_NEW \
        --eval_interval=$GRPO_EVAL_INTERVAL --eval_n=$GRPO_EVAL_N --gen_batch_size=$GEN_BATCH
}

# 6) Evaluation: the same held-out problems, greedy, r1_zero grader, for base -> SFT -> GRPO; GSM8K test
#    questions (same template) whose prompt leaves room for the answer in the model's context
stage_eval() {
    local e="$1" m
    declare -A ckpt=([base]="$P/out/ckpt.pt" [sft]="$S/out/ckpt.pt" [grpo]="$G/out/ckpt.pt")
    for m in base sft grpo; do
        run "$PY" sft.py --mode=eval --init_from="${ckpt[$m]}" --tokenizer_dir="$TOK" --out_dir="$e/task_$m" \
            --device=$DEVICE --dtype=$DTYPE --val_path="$D/task/task_val.jsonl" --max_new_tokens=$MAX_NEW \
            --gen_batch_size=$GEN_BATCH --prompt_template="$D/task/template.txt"
    done
    run "$PY" - "$DATA/a5/gsm8k/test.jsonl" "$D/task/template.txt" "$TOK" "$CTX" "$MAX_NEW" "$GSM8K_N" \
        "$e/gsm8k.jsonl" <<'EOF'
import json, os, sys
import bpe
src, template, tok_dir, ctx, max_new, n, out = sys.argv[1:]
template, tok = open(template).read(), bpe.Tokenizer.from_dir(tok_dir)
rows, seen = [], 0
if os.path.exists(src):
    for line in open(src, encoding='utf-8'):
        r = json.loads(line)
        seen += 1
        prompt = template.replace('{question}', r['question'])
        if len(tok.encode(prompt)) + min(int(max_new), 32) <= int(ctx):  # room for at least a short answer
            rows.append({'prompt': prompt, 'ground_truth': r['answer'].rsplit('####', 1)[-1].strip().replace(',', '')})
        if len(rows) == int(n):
            break
else:
    print(f"GSM8K not found at {src}: skipped")
with open(out + '.tmp', 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
os.replace(out + '.tmp', out)
print(f"GSM8K: {len(rows)} of the first {seen} test questions fit a context of {ctx} tokens -> {out}")
EOF
    if [[ -s "$e/gsm8k.jsonl" ]]; then
        for m in $GSM8K_MODELS; do
            run "$PY" sft.py --mode=eval --init_from="${ckpt[$m]}" --tokenizer_dir="$TOK" --out_dir="$e/gsm8k_$m" \
                --device=$DEVICE --dtype=$DTYPE --val_path="$e/gsm8k.jsonl" --max_new_tokens=$MAX_NEW \
                --gen_batch_size=$GEN_BATCH --prompt_template="$D/task/template.txt"
        done
    fi
}

# 7) The report (a Python heredoc: it only reads what the stages wrote)
stage_report() {
    run "$PY" - "$RUN_DIR" "$PUBLISH" <<'EOF'
import glob, json, os, platform, shutil, subprocess, sys, time
import torch
run_dir, publish = sys.argv[1], sys.argv[2]
J = lambda *p: os.path.join(run_dir, *p)  # noqa: E731


def load(path, default=None):
    try:
        with open(J(path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def jsonl(path):
    return [json.loads(l) for l in open(J(path), encoding='utf-8') if l.strip()] if os.path.exists(J(path)) else []


def table(header, rows):
    out = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' if i == 0 else '---:' for i in range(len(header))) + '|']
    return out + ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]


def pct(a, b):
    return f"{100 * a / b:.1f}%" if b else '-'


cfg = dict(l.rstrip('\n').split('=', 1) for l in open(J('config.env')) if '=' in l)
L, images = [], []


def image(rel, title):
    if os.path.exists(J(rel)):
        images.append(rel)
        L.extend(['', f'![{title}]({rel})'])


stage_s = {st: (load(f'{st}/DONE') or {}).get('wall_s')
           for st in ('data', 'tokenizer', 'pretrain', 'sft', 'grpo', 'eval')}
dev = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg['DEVICE'] == 'cuda' else \
    f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True,
                           text=True).stdout.strip()
    commit += ' (+ local changes)' if dirty else ''
except OSError:
    commit = '?'
total = sum(v for v in stage_s.values() if v)
L += [f"# lmscratch speedrun: profile '{cfg['PROFILE']}'", '',
      f"Device: {dev}. Python {platform.python_version()}, torch {torch.__version__}"
      f"{', CUDA ' + torch.version.cuda if torch.version.cuda else ''}; git {commit}. "
      f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Run folder: `{run_dir}`.", '',
      f"Command: `bash speedrun.sh --{cfg['PROFILE']}`" + (f" (--nproc={cfg['NPROC']})" if cfg['NPROC'] != '1' else '')
      + f"; crawl `{cfg['CRAWL']}`. Wall-clock of the stages: **{total / 60:.1f} minutes** in all.", '',
      '## Wall-clock per stage', '']
L += table(['stage', 'seconds', 'minutes'],
           [(k, f"{v:.0f}" if v else '-', f"{v / 60:.1f}" if v else '-') for k, v in stage_s.items()]
           + [('**total**', f"{total:.0f}", f"{total / 60:.1f}")])

# 1) data
rep, dd = load('data/cc/report.json', {}), load('data/dedup_stats.json', {})
c = rep.get('counts', {})
L += ['', '## 1. Data', '', f"Crawl: {rep.get('files', 0)} file(s), {c.get('records', 0):,} records -> "
      "`cc_filter.py` (fastText language ID: English at >= 0.5; Gopher rules; PII masks) -> one file per page -> "
      "`dedup.py --mode=exact` (lines that occur more than once anywhere are removed) -> `dedup.py --mode=minhash` "
      "(word 5-grams, Jaccard >= 0.8).", '']
rows, n = [], c.get('records', 0)
for name, key in [('not HTML', 'drop_not_html'), ('undecodable', 'drop_undecodable'), ('empty text', 'drop_empty'),
                  ('language (not English / unsure)', 'drop_lang'), ('gopher: word count', 'drop_gopher_words'),
                  ('gopher: mean word length', 'drop_gopher_word_length'),
                  ('gopher: ellipsis lines', 'drop_gopher_ellipsis'),
                  ('gopher: words with a letter', 'drop_gopher_alpha')]:
    rows.append((name, f"{n:,}", f"{c.get(key, 0):,}", f"{n - c.get(key, 0):,}", pct(c.get(key, 0), n)))
    n -= c.get(key, 0)
pages, lines, dedup = dd.get('pages', {}), dd.get('lines', {}), dd.get('dedup', {})
if pages:
    rows.append(('exact line dedup: pages left empty', f"{pages['docs']:,}",
                 pages['docs'] - lines['nonempty_docs'],
                 f"{lines['nonempty_docs']:,}", pct(pages['docs'] - lines['nonempty_docs'], pages['docs'])))
    rows.append(('MinHash near-duplicate pages', f"{lines['nonempty_docs']:,}",
                 lines['nonempty_docs'] - dedup['nonempty_docs'], f"{dedup['nonempty_docs']:,}",
                 pct(lines['nonempty_docs'] - dedup['nonempty_docs'], lines['nonempty_docs'])))
L += table(['filter (documents)', 'in', 'dropped', 'kept', 'dropped %'], rows)
if pages:
    L += ['', f"Lines: {pages['lines']:,} in the kept pages, {lines['lines']:,} after exact line dedup "
          f"({pct(pages['lines'] - lines['lines'], pages['lines'])} removed). PII masked: {c.get('pii_emails', 0)} "
          f"emails, {c.get('pii_phones', 0)} phone numbers, {c.get('pii_ips', 0)} IPv4 addresses. Web text kept: "
          f"{dd['web']['docs']:,} documents, {dd['web']['bytes'] / 1e6:.2f} MB (`data/web.txt`)."]
pm = load('tokenizer/pycode/meta.json', {})
files = pm.get('manifest', {}).get('files', {})
if files:
    L += ['', f"pycode (`data/pycode/prepare.py` in stage 2; source: {', '.join(pm.get('source', []))}):", '']
    L += table(['step', 'files', 'MB'], [(k, f"{v['files']:,}", f"{v['bytes'] / 1e6:.2f}") for k, v in files.items()
                                        if isinstance(v, dict) and 'files' in v])
n_sft = sum(1 for _ in open(J('data/task/task_sft.jsonl'))) if os.path.exists(J('data/task/task_sft.jsonl')) else 0
n_val = sum(1 for _ in open(J('data/task/task_val.jsonl'))) if os.path.exists(J('data/task/task_val.jsonl')) else 0
L += ['', f"Task (`sft.py --mode=make_data`): {n_sft:,} training problems with worked traces, {n_val:,} held-out "
      f"problems (never in any training text); {cfg['TASK_MIN_STEPS']}-{cfg['TASK_MAX_STEPS']} operations on "
      f"numbers up to {cfg['TASK_MAX_NUMBER']}. Their worked solutions in a plain 'Question/Solution/Answer' form "
      f"(no tags) join pre-training x{cfg['TASK_REPEAT']}, as in sft.py's demo: the base model sees the arithmetic, "
      "SFT teaches the <think>/<answer> format."]

# 2) tokenizer
tm = load('tokenizer/tokens/meta.json', {})
L += ['', '## 2. Tokenizer', '', f"`bpe.py` trained on the kept web text: vocabulary {tm.get('vocab_size')} "
      f"(256 bytes + merges + '<|endoftext|>'), {tm.get('dtype')} token files.", '']
rows = []
for corpus, m in tm.get('sources', {}).items():
    sp = m.get('splits', {})
    rows.append((corpus, f"{sp.get('train', {}).get('tokens', 0):,}", f"{sp.get('val', {}).get('tokens', 0):,}",
                 f"{m.get('bytes_per_token', 0):.2f}"))
L += table(['corpus', 'train tokens', 'val tokens', 'bytes / token'], rows)
tok = tm.get('tokens', {})
tr = sum(v for k, v in tok.items() if k.startswith('train'))
L += ['', f"Pre-training mix (`tokenizer/tokens/`): {tr:,} train tokens = " + ', '.join(
      f"{k[6:]} {pct(v, tr)}" for k, v in tok.items() if k.startswith('train_')) + '; validation = web + pycode val '
      f"({sum(v for k, v in tok.items() if k.startswith('val')):,} tokens, {tm.get('val_bytes', 0):,} bytes)."]

# 3) pre-training
s = load('pretrain/out/summary.json', {})
L += ['', '## 3. Pre-training', '']
if s:
    L += table(['what', 'value'], [
        ('model', f"{cfg['N_LAYERS']} layers x {cfg['D_MODEL']}, {cfg['N_HEADS']} heads, context {cfg['CTX']}, "
                  f"{s['n_params'] / 1e6:.2f}M non-embedding parameters"),
        ('iterations x tokens', f"{s['iters']:,} x {int(cfg['BATCH']) * int(cfg['ACCUM']) * int(cfg['CTX']):,} = "
                                f"{s['tokens'] / 1e6:.1f}M tokens"),
        ('time (training loop, incl. compile and evals)', f"{s['time_s']:.0f} s"),
        ('throughput (steady state)', f"{s['tokens_per_s']:,.0f} tokens/s"),
        ('MFU', f"{100 * s['mfu']:.1f}%" if s['mfu'] else '- (CPU)'),
        ('final train loss', f"{s['train_loss']:.3f}"),
        ('**validation loss** (nats/token)', f"**{s['val_loss']:.3f}**"),
        ('**validation bits per byte**', f"**{s['val_bpb']:.3f}**" if s.get('val_bpb') else '-')])
    evals = [r for r in jsonl('pretrain/out/log.jsonl') if 'val_loss' in r]
    L += ['', 'Periodic validation:', '']
    L += table(['iteration', 'tokens', 'val loss', 'bits/byte'], [(r['iter'], f"{r['tokens'] / 1e6:.1f}M",
               f"{r['val_loss']:.3f}", f"{r.get('val_bpb', float('nan')):.3f}") for r in evals])
    if s.get('sample'):
        L += ['', 'Sample (prompt "Question: ", temperature 0.8):', '', '```', s['sample'].strip()[:600], '```']
image('pretrain/out/loss.png', 'pre-training loss')

# 4-6) post-training and evaluation


def metrics(path):
    recs = jsonl(path)
    if not recs:
        return None
    n = len(recs)
    return {'n': n, 'acc': sum(r['answer_reward'] for r in recs) / n, 'fmt': sum(r['format_reward'] for r in recs) / n,
            'len': sum(r['length'] for r in recs) / n, 'example': recs[0]}


L += ['', '## 4. SFT', '', f"`sft.py --mode=sft` from the pre-trained checkpoint, tokenizer `tokenizer/tokenizer`: "
      f"{cfg['SFT_ITERS']} steps x {cfg['SFT_BATCH']} examples (of the first {cfg['SFT_EXAMPLES']} problems' gold "
      f"traces), lr {cfg['SFT_LR']}. Prompt: `User: {{question}}\\nAssistant: <think>` (r1_zero's ending)."]
image('sft/out/sft_curves.png', 'SFT loss and accuracy')
glog = jsonl('grpo/out/grpo_log.jsonl')
L += ['', '## 5. GRPO', '', f"`grpo.py` from the SFT checkpoint: {len(glog)} GRPO steps (time budget "
      f"{cfg['GRPO_TIME_S']} s) of {cfg['GRPO_ROLLOUT']} rollouts ({cfg['GRPO_GROUP']} per question), "
      f"temperature {cfg['GRPO_TEMP']}, reinforce_with_baseline, lr {cfg['GRPO_LR']}"
      f"{'' if cfg.get('GRPO_WARMUP', '0') in ('0', '') else ' (linear warm-up over ' + cfg['GRPO_WARMUP'] + ' steps)'}"
      f", up to {cfg['MAX_NEW']} new "
      "tokens; reward = the grader's answer reward."]
if glog:
    L += ['', f"Training reward {glog[0]['train_reward']:.3f} at step 1 -> {glog[-1]['train_reward']:.3f} at step "
          f"{glog[-1]['step']}; rollouts at {sum(r.get('rollout_tokens_per_s', 0) for r in glog) / len(glog):,.0f} "
          "tokens/s on average."]
image('grpo/out/grpo_curves.png', 'GRPO curves')
L += ['', '## 6. Evaluation', '', f"Held-out task problems ({n_val}), greedy decoding, up to {cfg['MAX_NEW']} new "
      "tokens, the r1_zero grader (format: `</think> <answer>` ... `</answer>`; answer: exact value).", '']
res = {m: metrics(f'eval/task_{m}/eval_generations_step0.jsonl') for m in ('base', 'sft', 'grpo')}
names = {'base': 'base (pre-trained)', 'sft': 'SFT', 'grpo': 'GRPO'}
L += table(['model', 'task accuracy', 'format rate', 'mean response tokens'],
           [(names[m], f"**{100 * r['acc']:.1f}%**", f"{100 * r['fmt']:.1f}%", f"{r['len']:.1f}")
            for m, r in res.items() if r])
if s:
    L += ['', f"Base model: validation loss {s['val_loss']:.3f} nats/token"
          + (f", {s['val_bpb']:.3f} bits per byte" if s.get('val_bpb') else '') + " (web + pycode validation text)."]
gsm = {m: metrics(f'eval/gsm8k_{m}/eval_generations_step0.jsonl') for m in ('base', 'sft', 'grpo')}
gsm = {m: r for m, r in gsm.items() if r}
if gsm:
    L += ['', f"GSM8K test through the same prompt, generation and grader (the first "
          f"{next(iter(gsm.values()))['n']} questions whose prompt fits the {cfg['CTX']}-token context): "
          + ', '.join(f"{names[m]} {100 * r['acc']:.1f}% (format {100 * r['fmt']:.1f}%)" for m, r in gsm.items())
          + ". Expected near zero: these models are tiny and never saw grade-school word problems beyond the "
          "synthetic task."]
else:
    L += ['', f"GSM8K: no test question fits the {cfg['CTX']}-token context (or the data is missing): skipped."]
ex = [(m, r['example']) for m, r in res.items() if r]
if ex:
    L += ['', f"First held-out problem, ground truth {ex[0][1]['ground_truth']}:", '', '```',
          ex[0][1]['prompt'].strip()]
    L += [f"[{names[m]}] {e['response'].strip()[:300]}" for m, e in ex] + ['```']
if all(res.values()):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = list(res)
    ax.bar([i - 0.2 for i in range(3)], [100 * res[m]['acc'] for m in xs], 0.4, label='accuracy')
    ax.bar([i + 0.2 for i in range(3)], [100 * res[m]['fmt'] for m in xs], 0.4, label='format rate')
    ax.set_xticks(range(3), [names[m] for m in xs])
    ax.set_ylabel('% of held-out problems')
    ax.set_ylim(0, 105)
    ax.legend()
    ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    fig.savefig(J('report_accuracy.tmp.png'), dpi=100)
    plt.close(fig)
    os.replace(J('report_accuracy.tmp.png'), J('report_accuracy.png'))
    image('report_accuracy.png', 'accuracy base -> SFT -> GRPO')

# 7) reproduction
L += ['', '## 7. Commands and versions', '', f"Every command with its exit code and seconds: `logs/<stage>.jsonl`; "
      "their output: `logs/<stage>.log`. Sizes of this run (`config.env`):", '', '```'] + \
     [f"{k}={v}" for k, v in cfg.items()] + ['```']
try:
    from importlib.metadata import version
    vers = {p: version(p) for p in ('numpy', 'fastwarc', 'resiliparse', 'fasttext-numpy2', 'regex', 'tiktoken')}
    L += ['', 'Versions: ' + ', '.join(f"{k} {v}" for k, v in vers.items()) + '.']
except Exception as e:  # a package installed another way: say so, the report still gets written
    L += ['', f'Versions: not all found ({e}).']
md = '\n'.join(L) + '\n'
with open(J('report.md.tmp'), 'w') as f:
    f.write(md)
os.replace(J('report.md.tmp'), J('report.md'))
print(md)
if publish:  # PREFIX.md next to PREFIX_<name>.png copies (e.g. results/speedrun_gpu)
    os.makedirs(os.path.dirname(os.path.abspath(publish)), exist_ok=True)
    for rel in images:
        name = f"{os.path.basename(publish)}_{rel.replace('/out/', '_').replace('/', '_')}"
        shutil.copyfile(J(rel), os.path.join(os.path.dirname(os.path.abspath(publish)), name))
        md = md.replace(f']({rel})', f']({name})')
    with open(publish + '.md', 'w') as f:
        f.write(md)
    print(f"published {publish}.md and {len(images)} image(s)")
EOF
}

for st in "${STAGES[@]}"; do stage "$st"; done
echo "speedrun: done: $RUN_DIR/report.md"
