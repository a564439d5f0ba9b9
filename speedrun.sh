#!/usr/bin/env bash
# speedrun.sh: the whole lmscratch pipeline in one command, from raw web pages to an RL-tuned model and a report.
#
# nanochat's speedrun on ONE GPU and offline, or on a CPU in minutes; each step a command of our scripts (CS336):
#   1) data       cc_filter.py (language ID, Gopher rules, PII masks) + dedup.py (exact lines, then MinHash
#                 near-duplicates) on a crawl; data/arith/prepare.py's arithmetic task; a pycode source folder
#   2) tokenizer  bpe.py on the kept web text; data/docs/prepare.py and data/pycode/prepare.py encode the corpora
#   3) pretrain   train.py (periodic validation, bits per byte, a sample at the end)
#   4) sft        sft.py --mode=sft on worked traces in the <think>/<answer> format, from the pre-trained model
#   5) grpo       grpo.py from the SFT model, rewards from the r1_zero grader, its lr chosen on validation
#   6) eval       sft.py --mode=eval of base (also k-shot) -> SFT -> GRPO on the task's test and gen splits, GSM8K
#   7) report     report.md: a table per stage, loss curves, accuracies, wall-clock, device and versions
# The glue between the scripts (profiles, small data steps, the report) is bench/speedrun.py.
# Run:
#   bash speedrun.sh                    # GPU profile when CUDA is there (else the CPU one)
#   bash speedrun.sh --cpu              # tiny sizes: the whole chain in <= 10 minutes on 2 cores
#   bash speedrun.sh --until=pretrain   # stop after a stage (drive a long run in calls of < 10 minutes each)
#   bash speedrun.sh --crawl='crawl/*.warc.gz' --run_dir=runs/mine --fresh
# Options: --cpu | --gpu24 (a 24 GB GPU: smaller micro-batches, same batch) | --tiny (test size, seconds) | --fresh
#   | --nproc=N (torchrun pre-training, same global batch) | --until=STAGE | --run_dir=DIR (runs/speedrun-<profile>)
#   | --crawl=GLOB ($LMSCRATCH_DATA/a4/docs_crawl.warc.gz) | --publish=PREFIX (also PREFIX.md and PREFIX_*.png)
#   | --pysrc=DIR (pycode source; default: the Python environment on GPU, a standard library sample on CPU)
# Resume: a stage writes <run_dir>/<stage>/ and <stage>/DONE last: done stages are skipped, interrupted ones redone.
# <run_dir>/config.env records the sizes: another configuration is refused unless --fresh. Logs: <run_dir>/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
DATA="${LMSCRATCH_DATA:-$ROOT/../shared/data}"
DATA="$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")"  # absolute: every command sees the same folder
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || PY=python3  # some machines (the GPU image) only have python3
GLUE=("$PY" bench/speedrun.py)
STAGES=(data tokenizer pretrain sft grpo eval report)
die() { echo "speedrun: error: $*" >&2; exit 2; }

# -----------------------------------------------------------------------------
# Command line, then the profile's sizes (bench/speedrun.py PROFILES) as shell variables
PROFILE='' RUN_DIR='' CRAWL="$DATA/a4/docs_crawl.warc.gz" PYSRC='' UNTIL='report' FRESH=0 NPROC=1 PUBLISH=''
for arg in "$@"; do
    case "$arg" in
        --cpu|--gpu|--gpu24|--tiny) PROFILE="${arg#--}" ;;
        --fresh) FRESH=1 ;;
        --nproc=*|--until=*|--run_dir=*|--crawl=*|--pysrc=*|--publish=*) k="${arg%%=*}"; k="${k#--}"
            printf -v "${k^^}" '%s' "${arg#*=}" ;;  # --run_dir=x sets RUN_DIR=x
        -h|--help) sed -n '2,/^set -euo/p' "$ROOT/speedrun.sh" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$arg' (see bash speedrun.sh --help)" ;;
    esac
done
[[ " ${STAGES[*]} " == *" $UNTIL "* ]] || die "--until=$UNTIL: give one of ${STAGES[*]}"
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || die "--nproc=$NPROC: give a positive integer"
if [[ -z "$PROFILE" ]]; then  # the gpu profile when torch sees a CUDA device
    "${GLUE[@]}" cuda && PROFILE=gpu || { PROFILE=cpu; echo "speedrun: no CUDA device: running the CPU profile"; }
fi
SIZES="$("${GLUE[@]}" profile "$PROFILE" "$NPROC")" || exit 2
eval "$SIZES"
# CPU: one torch thread per process (on a busy machine, OpenMP threads waiting for each other slow a step down)
[[ "$DEVICE" == cpu ]] && export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
(( NPROC > 1 )) && TRAIN_LAUNCH=(torchrun --standalone "--nproc_per_node=$NPROC") || TRAIN_LAUNCH=("$PY")
RUN_DIR="${RUN_DIR:-runs/speedrun-$PROFILE}"

# The crawl must name non-empty files; the run folder must be empty or a speedrun's of this configuration (its
# config.env; --fresh wipes a speedrun folder, never another one)
if (( FRESH )) || [[ ! -f "$RUN_DIR/data/DONE" ]]; then "${GLUE[@]}" crawl "$CRAWL" || exit 2; fi
config_text() { for v in PROFILE CRAWL PYSRC $PROFILE_KEYS; do printf '%s=%s\n' "$v" "${!v}"; done; }
config_text | "${GLUE[@]}" rundir "$RUN_DIR" "$FRESH" || exit 2
RUN_DIR="$(cd "$RUN_DIR" && pwd)"

# ---------------------------------------------------------------- Stage machinery: logs, commands, DONE markers
LOGS="$RUN_DIR/logs" && mkdir -p "$RUN_DIR/logs"
json_str() { local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"; s="${s//$'\t'/\\t}"; printf '"%s"' "${s//$'\n'/\\n}"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log_event() { printf '{"time": "%s", "stage": "%s", %s}\n' "$(date -u +%FT%TZ)" "$STAGE" "$1" >> "$LOGS/$STAGE.jsonl"; }

# run CMD ARGS...: one command of the current stage, its output to the terminal and to logs/<stage>.log, one JSONL
# event with the command line, exit code and seconds. A failure stops the whole run, naming the stage.
run() {
    local t0 rc cmd
    t0="$(now)" cmd="$(printf '%q ' "$@")"
    echo "+ ${cmd% }" | tee -a "$LOGS/$STAGE.log"
    set +e; "$@" 2>&1 | tee -a "$LOGS/$STAGE.log"; rc=${PIPESTATUS[0]}; set -e
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
    local dir="$RUN_DIR/$STAGE" t0 wall
    if [[ -f "$dir/DONE" ]]; then
        echo "== speedrun: stage '$STAGE' already done ($dir/DONE), skipped"
    else
        if [[ -d "$dir" ]]; then echo "== speedrun: stage '$STAGE' was interrupted: redoing it from scratch"; fi
        rm -rf "$dir" && mkdir -p "$dir"
        : > "$LOGS/$STAGE.log"; : > "$LOGS/$STAGE.jsonl"
        echo "== speedrun: stage '$STAGE' ($PROFILE profile) -> $dir"
        t0="$(now)"
        log_event "\"event\": \"start\", \"profile\": \"$PROFILE\""
        "stage_$STAGE" "$dir"
        wall="$(elapsed "$t0")"
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
TOK="$T/tokenizer" TEMPLATE="$RUN_DIR/data/template.txt"
export PYTHONUNBUFFERED=1 LMSCRATCH_DATA="$DATA"
COMMON=(--tokenizer_dir="$TOK" --device=$DEVICE --dtype=$DTYPE --prompt_template="$TEMPLATE")
GEN=(--max_new_tokens=$MAX_NEW --gen_batch_size=$GEN_BATCH)  # sft.py's generation (validation, evaluation)

# 1) Data: crawl -> cc_filter.py -> one file per page -> exact line dedup -> MinHash dedup -> web.txt; the task
#    (train/val/test/gen problems with worked traces, and the training traces as plain text); the pycode source folder
stage_data() {
    run "$PY" cc_filter.py --input="$CRAWL" --out_dir="$1/cc" --tokenize=False --num_workers=$NW
    run "${GLUE[@]}" pages "$1/cc/docs" "$1/pages"
    run "$PY" dedup.py --mode=exact --inputs="$1/pages" --output_dir="$1/lines" --num_workers=$NW --progress=False
    run "$PY" dedup.py --mode=minhash --inputs="$1/lines" --output_dir="$1/dedup" --num_workers=$NW --progress=False
    run "${GLUE[@]}" webtext "$1"
    printf 'User: {question}\nAssistant: <think>' > "$TEMPLATE"  # r1_zero's ending, no preamble
    run "$PY" data/arith/prepare.py --out_dir="$1/task" --n_train=$TASK_N_TRAIN --n_val=$TASK_N_VAL \
        --n_test=$TASK_N_TEST --n_gen=$TASK_N_GEN --min_steps=$TASK_MIN_STEPS --max_steps=$TASK_MAX_STEPS \
        --max_number=$TASK_MAX_NUMBER
    if [[ -z "$PYSRC" && "$PYSRC_MB" != 0 ]]; then run "${GLUE[@]}" pysrc "$1/pysrc" "$PYSRC_MB"; fi
}

# 2) Tokenizer: bpe.py on the kept web text; every corpus encoded with it; one token folder for train.py
stage_tokenizer() {
    local pysrc="$PYSRC" enc=(--tokenizer_dir="$1/tokenizer" --num_workers=$NW --progress=False)
    [[ -z "$pysrc" && -d "$D/pysrc" ]] && pysrc="$D/pysrc"
    run "$PY" bpe.py --input="$D/web.txt" --vocab_size=$VOCAB --out_dir="$1/tokenizer" --num_workers=$NW
    run "$PY" data/docs/prepare.py --src="$D/web.txt" --out_dir="$1/web" "${enc[@]}"
    run "$PY" data/docs/prepare.py --src="$D/task/pretrain.txt" --out_dir="$1/task" "${enc[@]}"
    run "$PY" data/pycode/prepare.py --src="$pysrc" --out_dir="$1/pycode" "${enc[@]}"
    run "${GLUE[@]}" mix "$1" "$TASK_REPEAT"  # train = web + pycode + task x TASK_REPEAT; val = web + pycode
}

# 3) Pre-training
stage_pretrain() {
    run "${TRAIN_LAUNCH[@]}" train.py --data_dir="$T/tokens" --out_dir="$1/out" --device=$DEVICE --dtype=$DTYPE \
        --compile=$COMPILE --d_model=$D_MODEL --num_layers=$N_LAYERS --num_heads=$N_HEADS --d_ff=$D_FF \
        --context_length=$CTX --batch_size=$BATCH --gradient_accumulation_steps=$ACCUM --max_iters=$MAX_ITERS \
        --max_time_s=$MAX_TIME_S --learning_rate=$LR --min_lr=$MIN_LR --warmup_iters=$WARMUP --optimizer=$OPTIMIZER \
        --eval_interval=$EVAL_INTERVAL --eval_iters=$EVAL_ITERS --log_interval=$LOG_INTERVAL --prompt='Question: ' \
        --max_new_tokens=$SAMPLE_TOKENS
}

# 4) SFT on gold traces in the <think>/<answer> format (sft.py stores the tokenizer folder in its checkpoint)
stage_sft() {
    run "$PY" sft.py --mode=sft --init_from="$P/out/ckpt.pt" --out_dir="$1/out" "${COMMON[@]}" \
        --train_path="$D/task/train.jsonl" --val_path="$D/task/val.jsonl" --n_train_examples=$SFT_EXAMPLES \
        --max_iters=$SFT_ITERS --batch_size=$SFT_BATCH --gradient_accumulation_steps=$SFT_ACCUM \
        --learning_rate=$SFT_LR --warmup_iters=$SFT_WARMUP --eval_interval=$SFT_EVAL_INTERVAL --eval_n=$SFT_EVAL_N \
        --log_interval=10 "${GEN[@]}"
}

# 5) GRPO from the SFT model, once per rate in GRPO_LRS (same start, same seed); the best final VALIDATION accuracy
#    chooses the rate and its run becomes grpo/out (lr_sweep.json: every rate); test and gen are not looked at here
stage_grpo() {
    local lr
    for lr in $GRPO_LRS; do run "$PY" grpo.py --init_from="$S/out/ckpt.pt" --out_dir="$1/lr$lr" "${COMMON[@]}" \
        --train_path="$D/task/train.jsonl" --val_path="$D/task/val.jsonl" --n_grpo_steps=$GRPO_STEPS \
        --time_budget_s=$GRPO_TIME_S --rollout_batch_size=$GRPO_ROLLOUT --group_size=$GRPO_GROUP \
        --train_batch_size=$GRPO_TRAIN_BATCH --gradient_accumulation_steps=$GRPO_ACCUM --learning_rate=$lr \
        --warmup_steps=$GRPO_WARMUP --sampling_temperature=$GRPO_TEMP --sampling_max_tokens=$MAX_NEW \
        --eval_interval=$GRPO_EVAL_INTERVAL --eval_n=$GRPO_EVAL_N --gen_batch_size=$GEN_BATCH; done
    run "${GLUE[@]}" pick_lr "$1" "$GRPO_LRS"
}

# 6) Evaluation (greedy): base, SFT and GRPO on test and gen (r1_zero prompt) and GSM8K (every test question that fits
#    the context); the base model also k-shot (the most shots <= FEWSHOT that fit every test and gen prompt)
stage_eval() {
    local m k paths gsm="$DATA/a5/gsm8k/test.jsonl" splits="$D/task/test.jsonl,$D/task/gen.jsonl"
    for m in "base:$P" "sft:$S" "grpo:$G"; do  # model:its stage folder
        paths="$splits" && [[ -s "$gsm" && " $GSM8K_MODELS " == *" ${m%%:*} "* ]] && paths+=",gsm8k"
        run "$PY" sft.py --mode=eval --init_from="${m#*:}/out/ckpt.pt" --out_dir="$1/${m%%:*}" "${COMMON[@]}" \
            --eval_paths="$paths" "${GEN[@]}"
    done
    run "${GLUE[@]}" fewshot "$TOK" "$CTX" "$MAX_NEW" "$FEWSHOT" "$D/task" "$1/fewshot_k" && k="$(cat "$1/fewshot_k")"
    if (( k > 0 )); then run "$PY" sft.py --mode=eval --init_from="$P/out/ckpt.pt" --out_dir="$1/base_fewshot" \
        "${COMMON[@]}" --fewshot=$k --train_path="$D/task/train.jsonl" --eval_paths="$splits" "${GEN[@]}"; fi
}
stage_report() { run "${GLUE[@]}" report "$RUN_DIR" "$PUBLISH"; }  # 7) reads only what the stages wrote

for st in "${STAGES[@]}"; do stage "$st"; done
echo "speedrun: done: $RUN_DIR/report.md"
