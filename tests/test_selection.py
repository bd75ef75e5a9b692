"""`divcfg select`'s pieces that need no training: candidate parsing, the G-sample flags, the rule,
and the student folders the demo derives from a recipe (a cached student of one recipe must never
be taken for another's)."""

from pathlib import Path

import numpy as np
import pytest

from divcfg.demo import student_dir
from divcfg.errors import UserError
from divcfg.recipe import SAMPLES_PER_STEP, Candidate, group_flags, parse_candidates
from divcfg.selection import choose, difference_se, plot_selection


def test_candidates_parse_with_optional_modifiers():
    assert parse_candidates("additive:5, multiplicative:10,additive:5:g4,additive:2:fkl:g4") == [
        Candidate("additive", 5.0), Candidate("multiplicative", 10.0), Candidate("additive", 5.0, 4),
        Candidate("additive", 2.0, 4, "forward_kl")]
    assert Candidate("additive", 5.0, 4).name == "add_b5_g4"
    assert Candidate("multiplicative", 10.0).name == "mult_b10"
    assert Candidate("additive", 2.0, 4, "forward_kl").name == "add_b2_g4_fkl"
    flags = Candidate("additive", 2.0, 4, "forward_kl").flags()
    assert flags[:2] == ["--reward-form", "additive"] and flags[-2:] == ["--divergence", "forward_kl"]
    assert Candidate("additive", 5.0).flags() == ["--reward-form", "additive"]   # the paper's recipe: no extras


def test_a_teacher_gamma_modifier_changes_the_teacher_and_the_name_only():
    c = parse_candidates("additive:5:g4:fkl:t3")[0]
    assert c == Candidate("additive", 5.0, 4, "forward_kl", 3.0) and c.name == "add_b5_g4_fkl_t3"
    assert c.gamma(1.5) == 3.0 and Candidate("additive", 5.0).gamma(1.5) == 1.5     # None: the demo's γ*
    assert c.flags() == Candidate("additive", 5.0, 4, "forward_kl").flags()         # γ goes to --gamma, not flags
    assert parse_candidates("additive:5:t2.5")[0].name == "add_b5_t2.5"
    assert "teacher γ=3" in c.label


def test_a_token_cap_modifier_changes_the_training_length_the_name_and_the_folder():
    c = parse_candidates("additive:15:n512")[0]
    assert c == Candidate("additive", 15.0, max_new_tokens=512) and c.name == "add_b15_n512"
    assert c.flags()[-2:] == ["--max-new-tokens", "512"] and "≤512 tokens" in c.label
    assert student_dir(Path("r"), 15.0, 1, c).name == "ft_beta15_n512_s1"
    assert student_dir(Path("r"), 15.0, 0).name == "ft_beta15"          # the preset's cap: no suffix


def test_a_gate_modifier_sets_the_reward_gate_and_its_own_folder():
    c = parse_candidates("additive:15:key")[0]
    assert c == Candidate("additive", 15.0, gate="key") and c.name == "add_b15_key" and "key-gated" in c.label
    assert c.flags()[-2:] == ["--reward-gate", "key"]
    assert student_dir(Path("r"), 15.0, 1, c).name == "ft_beta15_key_s1" != student_dir(Path("r"), 15.0, 1).name
    assert parse_candidates("additive:15:meter")[0].flags()[-2:] == ["--reward-gate", "meter"]


def test_the_fromb0_modifier_starts_the_diversity_student_from_its_seeds_beta0_student(tmp_path):
    from divcfg.selection import SelectionRun
    c = parse_candidates("additive:15:fromb0")[0]
    assert c == Candidate("additive", 15.0, from_beta0=True) and c.name == "add_b15_fromb0" and "from β=0" in c.label
    run = SelectionRun("demo", tmp_path, tmp_path / "o", 3.0, {k: Path(k) for k in ("base", "embedder", "scorer")},
                       Path("data/small"))
    with pytest.raises(UserError, match="no finished one"):
        run.finetune_args(c, 1)
    (tmp_path / "ft_beta0_s1").mkdir()
    (tmp_path / "ft_beta0_s1" / "DONE.json").write_text('{"finished": true}')
    argv = run.finetune_args(c, 1)
    assert argv[argv.index("--init") + 1] == str(tmp_path / "ft_beta0_s1")
    assert "--init" not in run.finetune_args(parse_candidates("additive:15")[0], 1)


def test_a_steps_modifier_sets_the_training_steps_and_a_folder_that_no_seed_suffix_can_mimic():
    c = parse_candidates("additive:15:s480")[0]
    assert c == Candidate("additive", 15.0, steps=480) and c.name == "add_b15_steps480"
    assert c.flags()[-2:] == ["--max-steps", "480"] and "480 steps" in c.label
    assert student_dir(Path("r"), 15.0, 2, c).name == "ft_beta15_steps480_s2"
    # the finetune command line puts the candidate's --max-steps after the preset's, so it wins
    from divcfg.cli import parse_command
    from divcfg.selection import SelectionRun
    run = SelectionRun("demo", Path("r"), Path("o"), 3.0, {k: Path(k) for k in ("base", "embedder", "scorer")},
                       Path("data/small"))
    argv = run.finetune_args(c, 1)
    assert argv.count("--max-steps") == 2 and parse_command(argv).max_steps == 480
    for bad in ("additive:15:s0", "additive:15:sx"):
        with pytest.raises(UserError, match="sN for N"):
            parse_candidates(bad)


def test_the_length_form_is_a_recipe_with_its_own_folder():
    c = parse_candidates("length:5")[0]
    assert c == Candidate("length", 5.0) and c.name == "len_b5" and c.flags() == ["--reward-form", "length"]
    assert student_dir(Path("r"), 5.0, 1, c).name == "ft_beta5_len_s1" != student_dir(Path("r"), 5.0, 1).name


@pytest.mark.parametrize("bad", ["", "additive", "additive:0", "additive:inf", "additive:5:4", "additive:5:g3",
                                 "additive:5:g16", "additive:5:gx", "additive:5:kl", "sum:5",
                                 "additive:5:t0.5", "additive:5:tx", "additive:5:tinf", "additive:5:t",
                                 "additive:5:n0", "additive:5:n", "additive:5:n1.5"])
def test_bad_candidates_get_one_line_errors(bad):
    with pytest.raises(UserError) as e:
        parse_candidates(bad)
    assert "\n" not in str(e.value) and "--candidates" in str(e.value)


def test_a_group_candidate_keeps_the_samples_per_step_and_uses_the_leave_one_out_baseline():
    assert group_flags(2) == []
    for g in (4, 8):
        flags = dict(zip(group_flags(g)[::2], group_flags(g)[1::2]))
        assert flags["--baseline"] == "loo"
        assert int(flags["--group-size"]) * int(flags["--prompts-per-step"]) == SAMPLES_PER_STEP


def test_the_rule_takes_the_most_diverse_candidate_that_keeps_the_base_quality():
    rows = {"base": {"quality": 0.30, "diversity": 0.70}, "beta0": {"quality": 0.40, "diversity": 0.60},
            "a": {"quality": 0.31, "diversity": 0.72}, "b": {"quality": 0.29, "diversity": 0.90},
            "c": {"quality": 0.35, "diversity": 0.71}}
    assert choose(rows)[0] == "a"
    rows["a"]["quality"] = 0.2
    assert choose(rows)[0] == "c"
    assert choose({"base": rows["base"], "x": {"quality": 0.1, "diversity": 1.0},
                   "y": {"quality": 0.2, "diversity": 0.1}})[0] == "y"


def test_student_folders_name_their_recipe():
    root = Path("r")
    names = [student_dir(root, b, s, Candidate(f, b or 1.0, g, d, t)).name for b in (0.0, 5.0) for s in (0, 1)
             for f in ("additive", "multiplicative") for g in (2, 4) for d in ("reverse_kl", "forward_kl")
             for t in (None, 3.0)]
    assert {"ft_beta0", "ft_beta0_s1", "ft_beta5", "ft_beta5_s1", "ft_beta5_mult", "ft_beta5_g4",
            "ft_beta5_mult_g4_s1", "ft_beta5_fkl", "ft_beta5_mult_g4_fkl_s1", "ft_beta5_g4_fkl_t3"} <= set(names)
    assert len(set(names)) == 2 + 2 * 16   # β=0 (two seeds) is one recipe; every β>0 recipe has its own folder


def test_the_margin_rule_wants_one_standard_error_of_quality_and_more_diversity_than_the_base():
    rows = {"base": {"quality": 0.30, "diversity": 0.70}, "beta0": {"quality": 0.40, "diversity": 0.60},
            "edge": {"quality": 0.305, "quality_se": 0.01, "diversity": 0.90},     # keeps quality, inside the noise
            "safe": {"quality": 0.33, "quality_se": 0.01, "diversity": 0.75},
            "narrow": {"quality": 0.40, "quality_se": 0.01, "diversity": 0.65}}    # not more diverse than the base
    assert choose(rows, "keep")[0] == "edge"
    assert choose(rows, "margin")[0] == "safe"
    rows["safe"]["quality_se"] = 0.04
    name, why = choose(rows, "margin")
    assert name == "narrow" and "no candidate" in why     # fallback: the largest Δ − SE


def test_the_both_rule_wants_one_standard_error_of_diversity_too():
    rows = {"base": {"quality": 0.30, "diversity": 0.70},
            "tie": {"quality": 0.33, "quality_se": 0.01, "diversity": 0.7005, "diversity_se": 0.02},  # session 10's
            "wide": {"quality": 0.32, "quality_se": 0.01, "diversity": 0.75, "diversity_se": 0.02},
            "wider": {"quality": 0.305, "quality_se": 0.01, "diversity": 0.80, "diversity_se": 0.02}}
    assert choose(rows, "margin")[0] == "wide"                # margin: both pass; the more diverse wins
    assert choose(rows, "both")[0] == "wide"                  # both: the tie's diversity is inside its noise
    rows["wide"]["diversity_se"] = 0.06
    name, why = choose(rows, "both")
    assert name == "wider" and "no candidate" in why          # fallback: the largest smaller margin − SE:
                                                              # wider −0.005, wide −0.01, tie −0.0195


def test_the_quality_standard_error_adds_the_prompt_and_the_seed_terms():
    base = [0.5, 0.4, 0.6, 0.5]
    one = [[0.6, 0.4, 0.6, 0.6]]                             # Δ per prompt 0.1, 0, 0, 0.1
    delta, se = difference_se(one, base)
    assert delta == pytest.approx(0.05) and se == pytest.approx(np.std([0.1, 0, 0, 0.1], ddof=1) / 2)
    # a second seed shifted by +0.1 everywhere: same per-prompt spread of the seed mean, plus a seed term
    two = one + [[q + 0.1 for q in one[0]]]
    delta2, se2 = difference_se(two, base)
    assert delta2 == pytest.approx(0.1)
    assert se2 ** 2 == pytest.approx(se ** 2 + np.var([0.05, 0.15], ddof=1) / 2)
    with pytest.raises(UserError):
        difference_se([[0.1]], base)                          # not the same prompts


def test_the_selection_plane_is_drawn(tmp_path):
    rows = {"base": {"quality": 0.30, "diversity": 0.70}, "beta0": {"quality": 0.40, "diversity": 0.60},
            "a": {"quality": 0.31, "quality_se": 0.01, "diversity": 0.72, "label": "additive β=5",
                  "per_seed": {"0": {"quality": 0.30, "diversity": 0.71}, "1": {"quality": 0.32, "diversity": 0.73}}}}
    plot_selection({"rows": rows, "chosen": "a", "seeds": [0, 1], "num_prompts": 4, "generations": 2},
                   tmp_path / "s.png")
    png = (tmp_path / "s.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_hot_teacher_modifier_sets_the_teacher_temperature_and_allows_beta_zero():
    c = parse_candidates("additive:0:t2:hot1.3")[0]
    assert (c.beta, c.teacher_gamma, c.teacher_temperature) == (0.0, 2.0, 1.3)
    assert c.name == "add_b0_t2_hot1.3" and "teacher τ=1.3" in c.label
    assert c.flags()[c.flags().index("--teacher-temperature") + 1] == "1.3"
    assert "--teacher-temperature" not in parse_candidates("additive:15")[0].flags()
    from divcfg.demo import student_dir
    assert student_dir(Path("r"), 0.0, 1, c).name == "ft_beta0_t2_hot1.3_s1"   # never the β=0 student's folder
    assert student_dir(Path("r"), 0.0, 1).name == "ft_beta0_s1"
    for bad in ("additive:0", "additive:5:hot0", "additive:5:hot30", "additive:5:hotx"):
        with pytest.raises(UserError, match="hotτ"):
            parse_candidates(bad)
