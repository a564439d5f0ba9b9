"""
dpo.py: instruction tuning data and Direct Preference Optimization (CS336 assignment 5, supplementary part).

What this file teaches:
  1) the course's packed SFT dataset: prompt/response documents written out with the Alpaca template, joined with
     end-of-text, cut into fixed windows (no padding, no loss mask: every token is a target, as in pre-training),
     and iterate_batches over it;
  2) DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"):
     the policy pi learns to prefer the chosen response over the rejected one relative to a frozen reference pi_ref,
         loss = -log sigmoid(beta * ((log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)))),
     with no reward model and no sampling; beta sets how far pi may move from pi_ref (an implicit KL penalty).
The log-probabilities, checkpoints and optimizer come from sft.py (imported along the data flow).

Run (one CPU or one GPU):
    python dpo.py --init_from=out-sft/ckpt.pt --train_path=prefs.jsonl   # JSONL of {prompt, chosen, rejected}
"""
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

import sft

# -----------------------------------------------------------------------------
# default config values (override on the command line: --key=value, or a config file)
init_from = ''  # the starting policy (also the frozen reference): a model.py checkpoint, e.g. sft.py's
tokenizer_dir = ''  # bpe.py tokenizer folder; '' = the one the checkpoint names
train_path = ''  # JSONL of {"prompt", "chosen", "rejected"} preference pairs
out_dir = 'out-dpo'  # ckpt.pt and dpo_log.jsonl go here
overwrite = False  # replace an existing out_dir/ckpt.pt (else dpo.py refuses)
beta = 0.1  # the DPO beta (the course's 0.1)
batch_size = 64  # preference pairs per optimizer step (the course's 64)
learning_rate = 1e-6  # AdamW learning rate (the course's 1e-6 for an 8B model; small models take more)
max_iters = 100  # optimizer steps
grad_clip = 1.0  # clip the global gradient norm at this value (0 = off)
log_interval = 10  # print every N steps
seed = 1337  # the order of the pairs
device = 'cuda' if torch.cuda.is_available() else 'cpu'  # cpu | cuda
dtype = 'bfloat16'  # autocast dtype on cuda: bfloat16 | float32
# -----------------------------------------------------------------------------

# The course's instruction-tuning template, as in shared/data/a5/prompts/alpaca_sft.prompt (the tests compare) less
# that file's final newline: end-of-text follows the response's last token (the course's packed-data fixture)
ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{response}")


def alpaca(instruction, response):
    return ALPACA_TEMPLATE.replace('{instruction}', instruction).replace('{response}', response)


class PackedSFTDataset(torch.utils.data.Dataset):
    """The course's packed instruction-tuning data: every {prompt, response} of a JSONL is written out with the Alpaca
    template and followed by end-of-text; the documents are concatenated and the stream is cut into windows of
    seq_length + 1 tokens: item i = {'input_ids': w[:-1], 'labels': w[1:]}, each (seq_length,). Packing wastes no
    compute on padding; the leftover tail is dropped."""

    def __init__(self, tokenizer, dataset_path, seq_length, shuffle=False, seed=0):
        docs = sft.read_jsonl(dataset_path, required=('prompt', 'response'))
        if shuffle:  # shuffle documents before packing, so that neighbouring windows hold unrelated documents
            random.Random(seed).shuffle(docs)
        ids = []
        for d in docs:
            ids += tokenizer.encode(alpaca(d['prompt'], d['response'])) + [sft.pad_id_of(tokenizer)]  # + end-of-text
        n = max(0, (len(ids) - 1) // seq_length)  # whole windows: each needs one extra token for its last label
        self.data, self.seq_length = torch.tensor(ids[:n * seq_length + 1], dtype=torch.long), seq_length

    def __len__(self):
        return max(0, (len(self.data) - 1) // self.seq_length)

    def __getitem__(self, i):
        w = self.data[i * self.seq_length:(i + 1) * self.seq_length + 1]  # seq_length + 1 tokens: inputs and targets
        return {'input_ids': w[:-1], 'labels': w[1:]}


def iterate_batches(dataset, batch_size, shuffle):
    """Batches of a dataset: dicts of stacked (batch_size, seq_length) tensors; the last batch may be smaller."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), each argument the summed log-prob of a whole
    response given its prompt under the policy pi or the frozen reference ref."""
    return -F.logsigmoid(beta * ((policy_chosen_logps - ref_chosen_logps) -
                                 (policy_rejected_logps - ref_rejected_logps)))


def compute_per_instance_dpo_loss(lm, lm_ref, tokenizer, beta, prompt, response_chosen, response_rejected):
    """The course's DPO loss of one (prompt, chosen, rejected) triple. Each sequence is the Alpaca template with the
    response, then end-of-text; only the response's tokens are scored, because the prompt part is the same in both
    sequences and its log-probs would cancel in the difference anyway."""
    prefix = ALPACA_TEMPLATE.split('{response}')[0].replace('{instruction}', prompt)  # up to the response
    eot = sft.pad_id_of(tokenizer)
    resp = [tokenizer.encode(alpaca(prompt, r)[len(prefix):]) + [eot] for r in (response_chosen, response_rejected)]
    b = sft.collate_prompt_and_output([tokenizer.encode(prefix)] * 2, resp, eot)
    dev = next(lm.parameters()).device  # the reference may sit on another device (the course: a GPU each)

    def logps(model):  # (2,): summed response log-probs of chosen and rejected, on the policy's device
        d = next(model.parameters()).device
        lp = sft.get_response_log_probs(model, b['input_ids'].to(d), b['labels'].to(d))['log_probs']
        return sft.masked_normalize(lp, b['response_mask'].to(d), 1.0, dim=-1).to(dev)
    pi = logps(lm)
    with torch.no_grad():  # the reference is frozen: no graph through it
        ref = logps(lm_ref)
    return dpo_loss(pi[0], pi[1], ref[0], ref[1], beta)


def train_dpo(model, ref_model, tokenizer, pairs, beta=0.1, max_iters=100, batch_size=64, learning_rate=1e-6,
              grad_clip=1.0, seed=0, log_interval=10, out_dir='', dtype='bfloat16'):
    """DPO on [{'prompt', 'chosen', 'rejected'}] against a frozen reference: each optimizer step averages the
    per-instance loss of batch_size pairs (one backward per pair, so memory stays that of one pair, as in the course).
    Logs the loss and the preference accuracy (how often the implicit reward beta * log(pi / pi_ref) ranks the
    chosen response first, i.e. loss < log 2). Returns {'loss': [...], 'pref_accuracy': [...]}."""
    if any(not p['chosen'].strip() or not p['rejected'].strip() for p in pairs):
        raise ValueError("a preference pair has an empty chosen or rejected response")
    ref_model.eval().requires_grad_(False)
    opt = sft.adamw(model, learning_rate)
    rng, hist, t0 = random.Random(seed), {'loss': [], 'pref_accuracy': []}, time.time()
    dev = next(model.parameters()).device
    model.train()
    for step in range(max_iters):
        for g in opt.param_groups:
            g['lr'] = sft.lr_at(step / max_iters, learning_rate, 0.1)
        loss_sum, wins = 0.0, 0
        for p in (pairs[rng.randrange(len(pairs))] for _ in range(batch_size)):
            with sft.amp(dev, dtype):
                loss = compute_per_instance_dpo_loss(model, ref_model, tokenizer, beta, p['prompt'], p['chosen'],
                                                     p['rejected'])
            (loss / batch_size).backward()  # gradients add up over the pairs of the step
            loss_sum, wins = loss_sum + loss.item() / batch_size, wins + (loss.item() < 0.6931)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist['loss'].append((step + 1, loss_sum))
        hist['pref_accuracy'].append((step + 1, wins / batch_size))
        if (step + 1) % log_interval == 0 or step == 0:
            print(f"dpo step {step + 1}/{max_iters}: loss {loss_sum:.4f}, preference accuracy {wins / batch_size:.2f}, "
                  f"{time.time() - t0:.0f}s")
    model.eval()
    if out_dir:
        sft.save_ckpt(os.path.join(out_dir, 'ckpt.pt'), model, opt, max_iters,
                      tokenizer_dir=getattr(tokenizer, 'tokenizer_dir', ''))
        sft.write_jsonl(os.path.join(out_dir, 'dpo_log.jsonl'), [{'step': s, 'loss': v, 'pref_accuracy': a} for
                                                                 (s, v), (_, a) in zip(hist['loss'],
                                                                                       hist['pref_accuracy'])])
    return hist


def die(msg):
    """A user error: one line naming the key or file and the fix, exit code 2, nothing written."""
    print(f"dpo.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    """Check the config, read every input, then train (reads no sys.argv itself)."""
    for k, ok, want in (('beta', beta > 0, '> 0'), ('learning_rate', learning_rate > 0, '> 0'),
                        ('batch_size', batch_size >= 1, '>= 1'), ('max_iters', max_iters >= 1, '>= 1'),
                        ('log_interval', log_interval >= 1, '>= 1'), ('grad_clip', grad_clip >= 0, '>= 0'),
                        ('dtype', dtype in ('bfloat16', 'float32'), 'bfloat16 or float32'),
                        ('init_from', os.path.isfile(init_from), 'an existing checkpoint (e.g. out-sft/ckpt.pt)'),
                        ('train_path', os.path.isfile(train_path), 'an existing JSONL of {prompt, chosen, rejected}')):
        if not ok:
            die(f"--{k}={globals()[k]!r} must be {want}")
    out = os.path.join(out_dir, 'ckpt.pt')
    if os.path.abspath(out) in (os.path.abspath(init_from), os.path.abspath(train_path)):
        die(f"{out} is an input and would be overwritten: choose another --out_dir")
    if os.path.exists(out) and not overwrite:
        die(f"{out} exists: choose another --out_dir, or --overwrite=True to replace it")
    try:
        pairs = sft.read_jsonl(train_path, required=('prompt', 'chosen', 'rejected'))
        model, tok = sft.load_policy(init_from, device, tokenizer_dir)
        ref, _ = sft.load_policy(init_from, device, tokenizer_dir)
    except (ValueError, OSError) as e:
        die(str(e))
    ctx = model.config.context_length  # a sequence is the template, the longer response and end-of-text
    long = [i + 1 for i, p in enumerate(pairs)  # tokens, not characters: 'é' is 2 byte tokens
            if max(len(tok.encode(alpaca(p['prompt'], r))) for r in (p['chosen'], p['rejected'])) >= ctx]
    if not pairs or long:
        die(f"{train_path}: pair {long[0]} is longer than the model's context ({ctx} tokens)" if long else
            f"{train_path} has no preference pairs")
    train_dpo(model, ref, tok, pairs, beta, max_iters, batch_size, learning_rate, grad_clip, seed, log_interval,
              out_dir, dtype)


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    main()
