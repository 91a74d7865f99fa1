"""The progress line's time left: the mean time per finished trial times the trials still to finish."""

import time

from study.report import StudySummary, progress_line


def _summary(complete: int, pruned: int, running: int = 0) -> StudySummary:
    states = {"COMPLETE": complete, "PRUNED": pruned, "RUNNING": running}
    return StudySummary("s", states, {}, {}, 0, {}, [], None)


def test_time_left_is_rate_times_remaining_and_zero_at_the_end() -> None:
    now = time.time()
    line = progress_line(_summary(8, 2), target=40, started=now - 100, deadline=None, done_before=0)
    # 10 trials in ~100 s, 30 to go: ~300 s = 5m00s (a second of slack for the clock between the calls)
    left = line.rsplit("search ~", 1)[1].split(" left")[0]
    assert left in {"5m00s", "5m01s", "5m02s", "5m03s"}, line
    done = progress_line(_summary(38, 2), target=40, started=now - 500, deadline=None, done_before=0)
    assert done.endswith("search ~0m00s left"), done
    past = progress_line(_summary(1, 0), target=40, started=now - 500, deadline=now - 10, done_before=0)
    assert past.endswith("search ~0m00s left"), past


def test_time_left_counts_only_this_runs_trials_and_is_capped_by_the_deadline() -> None:
    now = time.time()
    resumed = progress_line(_summary(20, 0), target=40, started=now - 200, deadline=None, done_before=10)
    # 10 new trials in 200 s: 20 s each, 20 to go: 400 s
    assert resumed.rsplit("search ~", 1)[1].startswith(("6m40s", "6m41s", "6m42s")), resumed
    capped = progress_line(_summary(20, 0), target=40, started=now - 200, deadline=now + 60, done_before=10)
    assert capped.rsplit("search ~", 1)[1].startswith(("0m59s", "1m00s")), capped


def test_the_choice_names_a_known_distiller_or_a_seeded_loss_scale_variant_of_one() -> None:
    import optuna
    from optuna.trial import create_trial

    from study.report import choice_text

    study = optuna.create_study(directions=["minimize"] * 3)
    study.add_trial(create_trial(values=[1.0, 1.0, 1.0], user_attrs={"known": "kd"}))
    study.add_trial(create_trial(values=[1.0, 1.0, 1.0], user_attrs={"seeded_from": "kd", "weight_step": -1}))
    study.add_trial(create_trial(values=[1.0, 1.0, 1.0]))

    def chosen(number: int) -> list[str]:
        row = {"trial": number, "val_acc": 0.875, "formula": f"formula {number}"}
        return choice_text(study, _summary(3, 0)._replace(verified=[row]))

    assert chosen(0) == [
        "chosen trial #0 (best verified val acc 0.8750) -- the known distiller 'kd': the search found "
        "nothing better:",
        "  formula 0",
    ]
    assert chosen(1)[0] == (
        "chosen trial #1 (best verified val acc 0.8750) -- the known distiller 'kd' at another loss scale "
        "(weight step -1), seeded in generation 0:"
    )
    assert chosen(2) == ["chosen trial #2 (best verified val acc 0.8750):", "  formula 2"]


def test_the_choice_states_its_paired_margin_over_plain_ce_and_the_best_known_distiller() -> None:
    import optuna
    from optuna.trial import create_trial

    from study.report import choice_text

    study = optuna.create_study(directions=["minimize"] * 3)
    study.add_trial(create_trial(values=[1.0, 1.0, 1.0], user_attrs={"known": "kd"}))
    study.add_trial(create_trial(values=[1.0, 1.0, 1.0]))

    def row(trial: int | None, seeds: list[int], accs: list[float]) -> dict:
        return {"trial": trial, "formula": f"f{trial}", "seeds": seeds, "val_acc": sum(accs) / len(accs),
                "val_acc_std": 0.0, "seed_val_acc": accs}  # fmt: skip

    win = row(1, [1, 2, 3, 4], [0.90, 0.92, 0.91, 0.93])
    kd = row(0, [1, 2, 3, 4], [0.89, 0.90, 0.91, 0.91])  # diffs 0.01 0.02 0.00 0.02: mean 0.0125
    ce = row(None, [1, 2, 4], [0.80, 0.81, 0.83])  # seed 3 missing: paired over 1, 2, 4
    lines = choice_text(study, _summary_with([win, kd, ce]))
    # written out: kd diffs' sample std = sqrt(((-.0025)^2 + .0075^2 + (-.0125)^2 + .0075^2) / 3) = 0.009574;
    # SE = 0.009574 / 2 = 0.004787; 0.0125 / 0.004787 = 2.6 SE. CE: diffs 0.10 0.11 0.10, mean 0.103333,
    # std 0.005774, SE 0.003333.
    assert lines[2] == "  +0.1033 +- 0.0033 val acc over plain CE, paired over 3 seeds"
    assert lines[3] == (
        "  +0.0125 +- 0.0048 val acc over the known distiller 'kd' (#0), paired over 4 seeds (2.6 SE)"
    )
    close = row(1, [1, 2, 3, 4], [0.90, 0.90, 0.92, 0.91])  # diffs 0.01 0.00 0.01 0.00: 0.005 +- 0.0029
    lines = choice_text(study, _summary_with([close, kd]))
    assert lines[2].endswith("(1.7 SE): within 2 SE, a margin this verification cannot resolve"), lines
    # a table written before per-seed accuracies were stored: no margin lines
    old = {k: v for k, v in win.items() if k != "seed_val_acc"}
    assert len(choice_text(study, _summary_with([old, kd]))) == 2


def _summary_with(verified: list[dict]) -> StudySummary:
    return _summary(2, 0)._replace(verified=verified)
