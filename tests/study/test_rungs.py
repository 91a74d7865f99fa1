"""The verification's rung plan: promotion rule, configuration, continuation through the artifact store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from study_fakes import FakeEvaluator, smoke_config

from study import rungs, verify
from study.config import SearchConfig, StudyConfig, load_config
from study.search import open_study, run_search
from study.worker import WorkerArgs, run_worker


def _row(key, acc, rejected=0, known=None, ce=False):
    return {"key": key, "val_acc": acc, "rejected": rejected, "known": known, "ce": ce}


# ----------------------------------------------------------------- the rule, by hand
def test_the_better_half_goes_on_with_the_best_known_distiller_and_ce() -> None:
    rows = [
        _row("3", 0.80),
        _row("5", 0.84),
        _row("7", 0.82),
        _row("9", 0.70),
        _row("1", 0.75, known="kd"),
        _row("2", 0.60, known="dist"),
        _row("ce", 0.65, ce=True),
    ]
    # 6 distillers: ceil(6 / 2) = 3 by rank (5, 7, 3); the best known (kd, 1) and CE always; plan order kept
    assert rungs.promote(rows, None) == ["3", "5", "7", "1", "ce"]
    assert rungs.promote(rows, 1) == ["5", "1", "ce"]
    assert rungs.promote(rows, 10) == ["3", "5", "7", "9", "1", "2", "ce"]


def test_ties_go_to_the_earlier_planned_distiller() -> None:
    rows = [_row("4", 0.8), _row("2", 0.8), _row("6", 0.8), _row("ce", 0.5, ce=True)]
    assert rungs.promote(rows, 1) == ["4", "ce"]  # plan order: 4 was ranked first by the search
    assert rungs.promote(rows, None) == ["4", "2", "ce"]  # ceil(3 / 2) = 2


def test_a_distiller_with_a_rejected_run_stops_at_that_rung_even_when_protected() -> None:
    rows = [
        _row("3", 0.90, rejected=1),  # the best mean, but one seed diverged: no checkpoint to continue
        _row("5", 0.84),
        _row("1", 0.95, rejected=1, known="kd"),  # the known distiller diverged too
        _row("2", 0.60, known="dist"),
        _row("ce", None, rejected=2, ce=True),
    ]
    # n = 4 distillers (rejected included): keep 2 by rank among those alive (5, 2); dist is the best known
    # that is alive; CE, rejected, stops
    assert rungs.promote(rows, None) == ["5", "2"]


def test_job_names_and_rung_costs() -> None:
    assert rungs.job_name("12", 3, 0.25) == "verify:12:3@0.25"
    assert rungs.parse_job("verify:12:3@0.25") == ("12", "3", 0.25)
    assert rungs.parse_job("verify:12:3") is None and rungs.parse_job("ce_reference") is None
    assert rungs.trained_fraction(0.5, 200, 100) == pytest.approx(0.25)
    jobs = [
        {"fraction": 0.25, "trained_fraction": 0.25, "cpu_s": 1.0},
        {"fraction": 0.25, "cpu_s": 2.0},  # no trained_fraction: counts its whole rung (from scratch)
        {"fraction": 0.5, "trained_fraction": 0.25, "cpu_s": 3.0},
        {"fraction": 1.0, "trained_fraction": 1.0, "cpu_s": 10.0},  # restarted from scratch
        {"fraction": None},
    ]
    costs = rungs.rung_costs(jobs, [0.25, 0.5, 1.0])
    assert [(c["jobs"], c["full_runs"], c["cpu_s"]) for c in costs] == [
        (2, 0.5, 3.0),
        (1, 0.25, 3.0),
        (1, 1.0, 10.0),
    ]


# ----------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("rungs_", "keep", "match"),
    [
        ([0.5, 0.25], None, r"verify_rungs must increase, got \[0.5, 0.25\]"),
        ([0.25, 0.25, 1.0], None, "must increase"),
        ([0.25, 1.5], None, r"1.5 is outside \(0, 1\]"),
        ([0.0, 1.0], None, r"0.0 is outside \(0, 1\]"),
        ([], None, "non-empty list"),
        ([0.25, 1.0], 0, "verify_keep must be None or an int >= 1"),
        ([0.25, 1.0], True, "verify_keep must be None or an int >= 1"),
    ],
)
def test_a_bad_rung_plan_is_refused_naming_the_value(rungs_, keep, match) -> None:
    with pytest.raises(ValueError, match=match):
        SearchConfig(verify_rungs=tuple(rungs_), verify_keep=keep)


def test_a_stored_verify_fraction_reads_as_a_one_rung_plan() -> None:
    cfg = StudyConfig.from_dict({"search": {"verify_fraction": 0.3}})
    assert cfg.search.verify_rungs == (0.3,) and cfg.search.verify_fraction == 0.3
    assert load_config("default").search.verify_rungs == (0.25, 0.5, 1.0)
    with pytest.raises(ValueError, match="both given"):
        StudyConfig.from_dict({"search": {"verify_fraction": 0.3, "verify_rungs": [0.5]}})


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--config", "{cfg}"], "verify_rungs must increase"),
        (
            ["--artifacts", "/proc/kdzero-cannot-write"],
            "artifact store '/proc/kdzero-cannot-write' cannot be",
        ),
        (["--artifacts", "ftp://host/x"], "unknown scheme 'ftp'"),
    ],
)
def test_bad_verification_input_is_one_line_exit_2_before_anything_runs(
    tmp_path, capsys, args, match
) -> None:
    from study.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[search]\nverify_rungs = [0.5, 0.25]\n")
    db = tmp_path / "kd.db"
    argv = ["search", "--preset", "smoke", "--storage", f"sqlite:///{db}", *(a.format(cfg=bad) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not db.exists()  # nothing was stored


# ----------------------------------------------------------------- the tournament, end to end (fakes)
def _search(cfg: StudyConfig, factory=None) -> optuna.Study:
    from study_fakes import make_fake

    return run_search(
        cfg,
        evaluator_factory=factory or make_fake,
        prepare=None,
        echo=lambda s: None,
        poll_s=0.5,
        refresh_s=0.2,
    )


def _verify_jobs(study: optuna.Study) -> list:
    side = verify.load_side_study(study)
    assert side is not None
    return [t for t in side.get_trials() if t.user_attrs.get("role") == "verify"]


def test_the_rung_plan_continues_runs_and_ends_with_the_trained_student(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    store = tmp_path / "shared-artifacts"
    cfg = smoke_config(
        url, 10, verify_top=3, verify_seeds=2, verify_rungs=[0.25, 0.5, 1.0], run={"artifacts": str(store)}
    )
    study = _search(cfg)
    jobs = _verify_jobs(study)
    by_rung = {f: [t for t in jobs if t.user_attrs["fraction"] == f] for f in (0.25, 0.5, 1.0)}
    n0 = len(by_rung[0.25]) // 2  # distillers (CE included) at the first rung, two seeds each
    assert n0 >= 4 and all(t.state == TrialState.COMPLETE for t in jobs)
    # every later job continued its parent's run from the parent's last step (FakeEvaluator.FULL_STEPS 400)
    for f, before in ((0.5, 100), (1.0, 200)):
        assert by_rung[f]
        for t in by_rung[f]:
            assert t.user_attrs["resumed_from"] == before and "resume_refused" not in t.user_attrs
            assert t.user_attrs["trained_fraction"] == pytest.approx(f / 2)
            parent = t.user_attrs["parent_job"]
            assert (
                parent.endswith(f"@{f / 2:g}") and parent.split("@")[0] == t.user_attrs["job"].split("@")[0]
            )
    # nothing trained twice: one trial per job
    names = [t.user_attrs["job"] for t in jobs]
    assert len(names) == len(set(names))
    # the last rung holds the choice, the best known distiller and CE, on the same seeds
    table = verify.verified(study)
    assert table is not None and table[0]["fraction"] == 1.0 and table[0]["rung"] == 2
    last = {r["key"] for r in table if r["rung"] == 2}
    assert "ce" in last and any(r["known"] for r in table if r["rung"] == 2)
    assert [h["fraction"] for h in table[0]["history"]] == [0.25, 0.5, 1.0]
    # the trained student: the choice's best seed at the last rung, its test accuracy measured once
    student = verify.student(study)
    assert student is not None and student["key"] == table[0]["key"] and student["fraction"] == 1.0
    assert student["val_acc"] == max(table[0]["seed_val_acc"]) and student["test_acc"] == 0.625
    # checkpoints: those of the distillers that dropped out are deleted; the last rung's are kept
    side = verify.load_side_study(study)
    deleted = set(side.user_attrs.get("checkpoints_deleted", []))
    files = {p.name for p in store.iterdir()}
    for t in jobs:
        record = t.user_attrs["checkpoint"]
        key = t.user_attrs["job"].split(":")[1]
        if key in last:
            assert record["artifact_id"] in files and t.user_attrs["job"] not in deleted
        else:
            assert record["artifact_id"] not in files and t.user_attrs["job"] in deleted
    # cost per rung, in full-schedule runs: 0.25 per first-rung run, 0.25 per 50% run, 0.5 per 100% run
    costs = verify.verification_cost(study, side)
    assert [c["jobs"] for c in costs] == [len(by_rung[f]) for f in (0.25, 0.5, 1.0)]
    assert [c["full_runs"] for c in costs] == pytest.approx(
        [0.25 * len(by_rung[0.25]), 0.25 * len(by_rung[0.5]), 0.5 * len(by_rung[1.0])]
    )


def _with_cache(cfg: StudyConfig, folder: Path) -> StudyConfig:
    return dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, cache_dir=str(folder)))


class Recording(FakeEvaluator):
    """A fake whose instance the test keeps (one worker in this process)."""

    instances: list[FakeEvaluator] = []

    def __init__(self, exp, device) -> None:
        super().__init__(exp, device)
        Recording.instances.append(self)


def test_a_second_machine_continues_a_rung_the_first_started_through_a_shared_artifact_folder(
    tmp_path,
) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    shared = tmp_path / "nfs" / "artifacts"
    run = {"artifacts": str(shared)}
    # machine A: the search and the first rung (its own cache folder)
    cfg_a = _with_cache(
        smoke_config(url, 8, verify_top=2, verify_seeds=2, verify_rungs=[0.25], run=run), tmp_path / "a"
    )
    study = _search(cfg_a)
    first = {t.user_attrs["job"]: t.number for t in _verify_jobs(study)}
    # the plan grows to the full schedule; machine B (another cache folder, the same shared artifacts) runs it
    cfg_b = smoke_config(url, 8, verify_top=2, verify_seeds=2, verify_rungs=[0.25, 1.0], run=run)
    open_study(
        _with_cache(cfg_b, tmp_path / "a")
    )  # stores the broader plan, as `study search` on any machine would
    Recording.instances.clear()
    run_worker(
        WorkerArgs(
            storage=url,
            study="s",
            cache_dir=str(tmp_path / "b"),
            artifacts=str(shared),
            heartbeat_interval=1,
            grace_period=3,
        ),
        evaluator_factory=Recording,
    )
    (fake,) = Recording.instances
    jobs = _verify_jobs(optuna.load_study(study_name="s", storage=url))
    again = [t for t in jobs if t.user_attrs["job"] in first]
    assert sorted(t.number for t in again) == sorted(first.values())  # the first rung was not trained again
    late = [t for t in jobs if t.user_attrs["fraction"] == 1.0]
    assert late and all(t.user_attrs["resumed_from"] == 100 for t in late)
    assert fake.continued == [(100, 1.0)] * len(late)  # B continued every run from A's checkpoints
    assert (tmp_path / "b" / "verify").is_dir()  # B's own scratch folder, under its own cache


def test_an_artifact_that_fails_its_hash_check_is_refused_named_and_retrained(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    store = tmp_path / "artifacts"
    one = smoke_config(
        url, 8, verify_top=1, verify_seeds=2, verify_rungs=[0.25], run={"artifacts": str(store)}
    )
    study = _search(one)
    jobs = _verify_jobs(study)
    damaged = next(t for t in jobs if t.user_attrs["job"] == "verify:ce:1@0.25")  # CE always goes on
    (store / damaged.user_attrs["checkpoint"]["artifact_id"]).write_bytes(b"other bytes")
    two = smoke_config(
        url, 8, verify_top=1, verify_seeds=2, verify_rungs=[0.25, 1.0], run={"artifacts": str(store)}
    )
    study = _search(two)
    late = {t.user_attrs["parent_job"]: t for t in _verify_jobs(study) if t.user_attrs["fraction"] == 1.0}
    child = late[damaged.user_attrs["job"]]
    assert "fails its content-hash check" in child.user_attrs["resume_refused"]
    assert damaged.user_attrs["checkpoint"]["artifact_id"] in child.user_attrs["resume_refused"]
    assert (
        child.state == TrialState.COMPLETE and child.user_attrs["resumed_from"] == 0
    )  # trained from the start
    assert child.user_attrs["trained_fraction"] == 1.0
    others = [t for p, t in late.items() if p != damaged.user_attrs["job"]]
    assert others and all(t.user_attrs["resumed_from"] == 100 for t in others)
    assert verify.verified(study) is not None  # the study stays readable and finished


# ----------------------------------------------------------------- artifact stores
class FakeS3:
    """The three S3 calls Optuna's Boto3ArtifactStore makes, on a dict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def upload_fileobj(self, f, bucket, key) -> None:
        self.objects[(bucket, key)] = f.read()

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's argument names
        import io

        from botocore.exceptions import ClientError

        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "missing"}}, "GetObject")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def delete_object(self, Bucket, Key) -> None:  # noqa: N803
        self.objects.pop((Bucket, Key), None)


def test_an_s3_store_keeps_checkpoints_under_its_prefix_and_checks_their_hash(tmp_path) -> None:
    from study.artifacts import ArtifactError, fetch, prepare_store, remove, upload

    s3 = FakeS3()
    store = prepare_store("s3://bucket/studies/one", s3_client=s3)
    assert s3.objects == {}  # the probe was written and removed
    trial = optuna.create_study().ask()
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights" * 100)
    record = upload(store, trial, src, step=12)
    assert record["step"] == 12 and record["bytes"] == 700
    assert set(s3.objects) == {("bucket", f"studies/one/{record['artifact_id']}")}
    assert fetch(store, record, tmp_path / "back.pt").read_bytes() == src.read_bytes()
    s3.objects[("bucket", f"studies/one/{record['artifact_id']}")] = b"other bytes"
    with pytest.raises(ArtifactError, match="fails its content-hash check"):
        fetch(store, record, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()
    assert remove(store, record) and s3.objects == {}
    with pytest.raises(ArtifactError, match="is not in the study's artifact store"):
        fetch(store, record, tmp_path / "gone.pt")


def test_default_artifact_locations() -> None:
    from study.artifacts import default_location, location

    assert default_location("sqlite:///runs/kd.db") == "runs/kd.db.artifacts"
    pg = default_location("postgresql://u:pw@host/db", "/cache")
    assert pg.startswith("/cache/artifacts/") and "pw" not in pg
    assert location("sqlite:///kd.db", "s3://b/p") == "s3://b/p"
    with pytest.raises(ValueError, match="needs a bucket"):
        from study.artifacts import open_store

        open_store("s3:///prefix")


def test_a_job_enqueued_twice_is_trained_once(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    study = _search(smoke_config(url, 8, verify_top=1, verify_seeds=1, verify_rungs=[0.25, 1.0]))
    side = verify.load_side_study(study)
    done = next(t for t in side.get_trials() if t.user_attrs.get("job") == "verify:ce:1@1")
    side.enqueue_trial({}, user_attrs=dict(done.user_attrs))  # as two workers advancing a rung at once would
    plan = verify.planned_jobs(study)
    before = verify.finished_jobs(side, plan)
    Recording.instances.clear()
    run_worker(
        WorkerArgs(storage=url, study="s", heartbeat_interval=1, grace_period=3), evaluator_factory=Recording
    )
    (fake,) = Recording.instances
    assert fake.evaluated == []  # nothing trained again
    twin = [
        t for t in side.get_trials() if t.user_attrs.get("job") == "verify:ce:1@1" and t.number != done.number
    ]
    assert (
        len(twin) == 1
        and twin[0].state == TrialState.PRUNED
        and twin[0].user_attrs["duplicate_of"] == done.number
    )
    assert verify.finished_jobs(side, plan) == before


def test_jobs_stored_before_the_rungs_are_read_under_their_rung_names_with_their_known_distiller() -> None:
    from optuna.trial import create_trial

    side = optuna.create_study(direction="maximize")
    legacy = {"role": "verify", "fraction": 0.25, "spec": None, "formula": "f", "source_trial": 3}
    for seed, acc in ((1, 0.8), (2, 0.9)):  # named and attributed as kdzero stored them before rungs
        attrs = {**legacy, "job": f"verify:3:{seed}", "seed": seed}
        side.add_trial(create_trial(state=TrialState.COMPLETE, value=acc, user_attrs=attrs))
    jobs = verify.jobs_by_name(side)
    assert {"verify:3:1", "verify:3:2", "verify:3:1@0.25", "verify:3:2@0.25"} <= set(jobs)
    rows = verify._rung_rows(side, ["verify:3:1@0.25", "verify:3:2@0.25"], {3: "kd"})
    assert len(rows) == 1 and rows[0]["known"] == "kd" and rows[0]["val_acc"] == pytest.approx(0.85)
    assert rungs.promote([*rows, _row("7", 0.95), _row("8", 0.96)], 1) == ["3", "8"]  # kd protected


def test_an_artifact_store_that_fails_mid_verification_does_not_undo_the_runs(
    tmp_path, monkeypatch, capsys
) -> None:
    import study.artifacts

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(study.artifacts, "upload", full_disk)
    study_ = _search(
        smoke_config(f"sqlite:///{tmp_path}/f.db", 8, verify_top=1, verify_seeds=1, verify_rungs=[0.25, 1.0])
    )
    jobs = _verify_jobs(study_)
    assert jobs and all(t.state == TrialState.COMPLETE for t in jobs)  # the runs stand
    assert all("No space left on device" in t.user_attrs["checkpoint_error"] for t in jobs)
    late = [t for t in jobs if t.user_attrs["fraction"] == 1.0]
    assert late and all(
        t.user_attrs["resumed_from"] == 0 and "kept no checkpoint" in t.user_attrs["resume_refused"]
        for t in late
    )
    assert verify.verified(study_) is not None and verify.student(study_) is None  # no student file to name
    assert "checkpoint not kept" in capsys.readouterr().err
