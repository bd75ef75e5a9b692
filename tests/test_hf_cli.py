"""Every stage on a Hugging Face causal LM through the CLI (``--base hf:PATH``): a tiny randomly
initialised GPT-2 with a WordLevel tokenizer built in code (GPT-2-style: one ``<|endoftext|>`` for
BOS and EOS, no PAD, so divcfg must add tokens), saved with ``save_pretrained``. Fine-tuning lowers the
KL to the CFG teacher; the result loads and generates in plain transformers; ``merge`` at λ=0.5 is the
tensor-wise LERP; ``evaluate`` writes the quality–diversity table with the MiniLM text judges; a
user's ``module:function`` judges are called with the documented arguments and reach the reward."""

from __future__ import annotations

import csv
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import transformers  # installed by the set-up: its absence fails, not skips
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from divcfg.cli import main as cli  # noqa: E402
from divcfg.domains.text import split_of  # noqa: E402

ADJ = ["calm", "stormy", "bright", "dark", "gentle", "wild", "quiet", "loud"]
NOUN = ["sea", "forest", "city", "river", "mountain", "desert"]
WORDS = ["a", "song", "about", "the", "and", "is", "very", "of", "in", "was", "night", "day", "sky",
         "rain", "sun", "wind", "blue", "green", "red", "old", "new", "we", "they", "sing", "walk", "."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 (d=32) and a word-level tokenizer, both built in code, saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "[UNK]"] + sorted(set(WORDS + ADJ + NOUN)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="[UNK]")
    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(conf).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    prompts = [f"a {a} song about the {n}" for a in ADJ for n in NOUN]
    splits = {s: sum(split_of(p) == s for p in prompts) for s in ("train", "val", "test")}
    assert min(splits.values()) >= 3, splits
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def finetune_args(lm: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--base", f"hf:{lm}", "--prompts", str(prompts), "--out", str(out), "--gamma", "3",
            "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "10", "--eval-prompts", "4",
            "--eval-samples", "4", "--eval-max-new-tokens", "0", "--eval-teacher", "false", "--ckpt-every", "10",
            "--lr", "1e-3", "--warmup-steps", "2", "--updates-per-batch", "1", "--bf16", "false",
            "--max-minutes", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def students(lm, prompt_file, tmp_path_factory) -> dict[str, Path]:
    """Two fine-tuned students of the tiny LM: β=0 (distillation only) and β=2 (+ MiniLM diversity)."""
    root = tmp_path_factory.mktemp("students")
    runs = {}
    for name, beta in (("distilled", "0"), ("diverse", "2")):
        runs[name] = root / name
        assert cli(finetune_args(lm, prompt_file, runs[name], "--beta", beta, "--max-steps", "40")) == 0
    return runs


def test_finetune_lowers_the_kl_to_the_cfg_teacher(students):
    s = json.loads((students["distilled"] / "summary.json").read_text())
    start, end = s["start"]["eval/kl_teacher"], s["end"]["eval/kl_teacher"]
    assert start > 0.02, f"the γ=3 teacher should differ from the student (KL {start:.4f})"
    assert end < 0.7 * start, f"KL to the γ=3 teacher {start:.4f} -> {end:.4f}"
    rows = [json.loads(line) for line in open(students["distilled"] / "metrics.jsonl")]
    train = [r for r in rows if "kl/teacher" in r]
    assert len(train) == 40 and "reward/diversity/mean" in train[0]   # MiniLM judge on the completions
    assert "eval/quality" in s["end"] and "eval/distinct_2" in s["end"]
    record = json.loads((students["diverse"] / "checkpoint" / "divcfg.json").read_text())
    assert record["beta"] == 2.0 and record["domain"] == "text" and record["judges"]["diversity"] == "minilm"
    assert record["special_ids"]["bos"] != record["special_ids"]["eos"] != record["special_ids"]["pad"]
    assert json.loads((students["diverse"] / "DONE.json").read_text())["finished"]


def test_finetuned_folder_loads_and_generates_in_plain_transformers(lm, students):
    folder = students["distilled"] / "checkpoint"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    base = AutoModelForCausalLM.from_pretrained(lm)
    assert tok.bos_token_id != tok.eos_token_id and tok.pad_token_id not in (tok.bos_token_id, tok.eos_token_id)
    assert model.config.vocab_size == len(tok) == base.config.vocab_size + 2   # added BOS and PAD rows
    ids = tok("a calm song about the sea", add_special_tokens=False)["input_ids"] + [tok.bos_token_id]
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids) and isinstance(tok.decode(out[0, len(ids):], skip_special_tokens=True), str)
    # the weights moved, the shared ones came from the base
    w, w0 = model.transformer.h[0].mlp.c_fc.weight, base.transformer.h[0].mlp.c_fc.weight
    assert not torch.equal(w, w0) and (w - w0).abs().max() < 1.0
    # the same logits as divcfg's adapter on the layout it was trained on
    from divcfg.models.base import load_generator_any
    gen = load_generator_any(f"hf:{folder}")
    cond = gen.encode_prompts(["a calm song about the sea"])
    x = torch.tensor([[tok.bos_token_id] + out[0, len(ids):].tolist()])
    with torch.no_grad():
        ours = gen.model(x, cond)
        plain = model(torch.cat([cond, x], 1)).logits[:, cond.shape[1]:]
    assert torch.allclose(ours, plain, atol=1e-5)


def test_merge_half_is_the_tensorwise_lerp(students, tmp_path):
    a, b = students["distilled"] / "checkpoint", students["diverse"] / "checkpoint"
    assert cli(["merge", f"hf:{a}", f"hf:{b}", "--lam", "0.5", "--out", str(tmp_path / "m")]) == 0
    ma, mb = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    mm = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    sa, sb, sm = ma.state_dict(), mb.state_dict(), mm.state_dict()
    assert set(sm) == set(sa) and any(not torch.equal(sa[k], sb[k]) for k in sa)
    for k in sa:
        if sa[k].is_floating_point():
            assert torch.allclose(sm[k], (sa[k] + sb[k]) / 2, atol=1e-6, rtol=0), k
    record = json.loads((tmp_path / "m" / "divcfg.json").read_text())
    assert record["merge"]["lam"] == 0.5 and record["parents"]["b"]["beta"] == 2.0
    assert (tmp_path / "m" / "tokenizer.json").exists()
    # λ outside [0, 1] and a model of another architecture: one-line errors, exit 2
    with pytest.raises(SystemExit) as e:   # argparse's range check
        cli(["merge", f"hf:{a}", f"hf:{b}", "--lam", "1.5", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    other = make_tiny_lm(tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["n_embd"], cfg["n_head"] = 16, 2
    (other / "config.json").write_text(json.dumps(cfg))
    AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(other)).save_pretrained(other)
    assert cli(["merge", f"hf:{a}", f"hf:{other}", "--lam", "0.5", "--out", str(tmp_path / "y")]) == 2


def test_evaluate_writes_the_quality_diversity_table(lm, students, prompt_file, tmp_path):
    out = tmp_path / "eval"
    rc = cli(["evaluate", "--base", f"hf:{lm}", "--quality", f"hf:{students['distilled']}",
              "--diversity", f"hf:{students['diverse']}", "--prompts", str(prompt_file), "--num-prompts", "3",
              "--generations", "2", "--max-new-tokens", "8", "--batch-size", "6", "--cfg-gammas", "3",
              "--temperatures", "1.5", "--lams", "0,0.5,1", "--bootstrap", "20", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["domain"] == "text" and results["judges"] == {"diversity": "minilm", "quality": "prompt_similarity"}
    names = [r["name"] for r in results["systems"]]
    assert names == ["base", "cfg_g3", "temp_t1.5", "distilled", "diversity", "merge_l0", "merge_l0.5", "merge_l1"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == names and "distinct_2" in table[0]
    for r in results["systems"]:
        assert -1.0 <= r["quality"] <= 1.0 and 0.0 <= r["diversity"] <= 2.0 and math.isfinite(r["tokens_per_s"])
    by = {r["name"]: r for r in results["systems"]}
    assert by["cfg_g3"]["forward_passes_per_token"] == 2 and by["merge_l0"]["same_as"] == "distilled"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(isinstance(s["completion"], str) for s in samples) and len(samples) == 6 * len(names)
    # quality recomputed from the completions with the same judge (prompt–completion MiniLM cosine)
    from divcfg.judges.text import PromptSimilarityQuality
    base = [s for s in samples if s["system"] == "base"]
    texts = [results["prompts"][s["prompt_index"]]["text"] for s in base]
    q = PromptSimilarityQuality().score(texts, [s["completion"] for s in base])
    assert by["base"]["quality"] == pytest.approx(float(q.mean()), abs=1e-5)


JUDGE_MODULE = '''
import torch
CALLS = []

def embed(completions):
    """embedder form: one vector per completion (bag of characters)"""
    CALLS.append(("embed", list(completions)))
    return torch.stack([torch.tensor([float(c.count(ch)) for ch in "aeiou"]) + 0.1 for c in completions])

def quality(prompts, completions, **kwargs):
    """TRL reward form"""
    values = [float(len(c.split())) for c in completions]
    CALLS.append(("quality", list(prompts), list(completions), sorted(kwargs), values))
    return values
'''


def test_user_judges_are_called_and_reach_the_reward(lm, prompt_file, tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(textwrap.dedent(JUDGE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_judges", None)
    run = tmp_path / "run"
    assert cli(finetune_args(lm, prompt_file, run, "--beta", "1", "--max-steps", "1", "--eval-prompts", "3",
                             "--diversity-judge", "my_judges:embed", "--quality-judge", "my_judges:quality",
                             "--quality-weight", "0.5", "--baseline", "ema")) == 0
    import my_judges
    kinds = [c[0] for c in my_judges.CALLS]
    assert kinds == ["embed", "quality"] * 3          # quick eval at start, the training step, quick eval at the end
    (_, step_completions), (_, prompts, completions, kw, q) = my_judges.CALLS[2], my_judges.CALLS[3]
    assert len(completions) == 8 and completions == step_completions and kw == []
    assert all(isinstance(c, str) for c in completions)
    assert prompts[0::2] == prompts[1::2] and all(p.startswith("a ") for p in prompts)   # each prompt × G
    row = next(json.loads(line) for line in open(run / "metrics.jsonl") if '"kl/teacher"' in line)
    assert row["reward/quality/mean"] == pytest.approx(sum(q) / len(q))
    e = torch.nn.functional.normalize(my_judges.embed(completions), dim=1)
    d = (1 - (e[0::2] * e[1::2]).sum(1)).clamp(min=0)
    paid = torch.tensor([bool(c.strip()) for c in completions])
    d = torch.where(paid[0::2] & paid[1::2], d, torch.zeros_like(d))
    assert row["reward/diversity/mean"] == pytest.approx(float(d.mean()), abs=1e-5)
    assert row["reward/mean"] == pytest.approx(float(d.mean()) + 0.5 * sum(q) / len(q), abs=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert "eval/quality" in summary["end"] and "eval/diversity" in summary["end"]


def test_sample_writes_text_files(students, tmp_path):
    folder = students["diverse"]
    out = tmp_path / "s"
    assert cli(["sample", "--base", f"hf:{folder}", "--prompt", "a wild song about the river", "--cfg", "2",
                "--null-prompt", "the", "--num-samples", "2", "--max-new-tokens", "8", "--out", str(out)]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["generator"] == "hf" and meta["null_prompt"] == "the" and len(meta["samples"]) == 2
    for s in meta["samples"]:
        assert Path(s["file"]).read_text().strip() == s["completion"].strip()


def test_user_errors_are_one_line(lm, prompt_file, tmp_path, capsys):
    assert cli(["finetune", "--base", f"hf:{lm}", "--out", str(tmp_path / "a"), "--max-steps", "1"]) == 2
    assert "--prompts FILE" in capsys.readouterr().err
    assert cli(["finetune", "--base", f"hf:{tmp_path / 'missing'}", "--prompts", str(prompt_file),
                "--out", str(tmp_path / "b")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(finetune_args(lm, prompt_file, tmp_path / "c", "--max-steps", "1", "--diversity-judge", "nope")) == 2
    assert "module:function" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert cli(finetune_args(lm, empty, tmp_path / "d", "--max-steps", "1")) == 2
    assert "no prompts" in capsys.readouterr().err


def test_length_reward_keeps_its_reference_across_a_resume(lm, prompt_file, tmp_path):
    """--reward-form length: L_ref is the first step's mean length, stored with the checkpoint, so a run
    stopped and resumed pays the same rewards as one run straight through."""
    from divcfg.checkpoint import STATE_FILE, read_training_state
    common = ("--beta", "1", "--reward-form", "length", "--ckpt-every", "1", "--eval-prompts", "3")
    assert cli(finetune_args(lm, prompt_file, tmp_path / "straight", *common, "--max-steps", "3")) == 0
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", *common, "--max-steps", "1")) == 0
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", *common, "--max-steps", "3", "--resume")) == 0
    rows = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl") if '"kl/teacher"' in line]
    for run in ("straight", "split"):
        state = read_training_state(tmp_path / run / "checkpoint" / STATE_FILE)
        assert state["length_ref"] == pytest.approx(rows[0]["completions/mean_length"])
    assert len({r["completions/mean_length"] for r in rows}) > 1     # a later step's mean would differ
    split = [json.loads(line) for line in open(tmp_path / "split" / "metrics.jsonl") if '"kl/teacher"' in line]
    assert [r["reward/mean"] for r in split] == pytest.approx([r["reward/mean"] for r in rows])
    assert all(r["reward/mean"] <= r["reward/diversity/mean"] + 1e-6 for r in rows)   # min(1, L/L_ref) ≤ 1
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "split" / "checkpoint").state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_resume_continues_the_same_run(lm, prompt_file, tmp_path):
    """4 steps straight vs 2 steps, stop, --resume to 4: the same weights (optimizer, RNG streams and
    the baseline restored from training_state.pt beside the save_pretrained folder)."""
    common = ("--beta", "1", "--baseline", "ema", "--ckpt-every", "2", "--eval-prompts", "3")
    assert cli(finetune_args(lm, prompt_file, tmp_path / "straight", *common, "--max-steps", "4")) == 0
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", *common, "--max-steps", "2")) == 0
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", *common, "--max-steps", "4", "--resume")) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "split" / "checkpoint").state_dict()
    base = AutoModelForCausalLM.from_pretrained(lm).state_dict()
    k = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(a[k], base[k])
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    steps = [json.loads(line)["step"] for line in open(tmp_path / "split" / "metrics.jsonl") if '"kl/teacher"' in line]
    assert steps == [1, 2, 3, 4]
    # a different β is refused on --resume, as is a second run into a finished folder
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", "--beta", "2", "--max-steps", "6", "--resume")) == 2
    assert cli(finetune_args(lm, prompt_file, tmp_path / "split", *common, "--max-steps", "6")) == 2
