"""Every server-side strategy, and differential privacy, in a real 2-round simulation."""

import numpy as np
import pytest

import run_folder as rf
from launcher.simulate import run_simulation

pytestmark = pytest.mark.slow

QUICK = {"num-server-rounds": 2, "local-epochs": 1, "fraction-train": 1.0, "fraction-evaluate": 0.0}


@pytest.mark.parametrize(
    "knobs",
    [
        {"strategy": "fedavg"},
        {"strategy": "fedavgm", "server-momentum": 0.5},
        {"strategy": "fedadam", "server-learning-rate": 0.01},
        {"strategy": "fedyogi", "server-learning-rate": 0.01},
        {"strategy": "fedadagrad", "server-learning-rate": 0.01},
        {"strategy": "fedprox", "proximal-mu": 0.1},
        {"strategy": "fedmedian"},
        {"strategy": "fedtrimmedavg", "trim-beta": 0.1},
        {"strategy": "krum"},  # 3 nodes: Krum's 2f + 3 with no malicious node assumed
        {"strategy": "multikrum", "krum-select": 2},
        {"strategy": "bulyan"},
        {"strategy": "fedavg", "update-screen": 3.0},
    ],
    ids=lambda k: "-".join(str(v) for v in k.values()),
)
def test_each_strategy_trains_through_flower(tmp_path, knobs):
    run_dir = run_simulation({**QUICK, **knobs, "run-name": "s"}, num_supernodes=3, output_dir=tmp_path, echo=False)
    run = rf.read_completed_run(run_dir)
    accuracy = [r["server"]["accuracy"] for r in run.rounds]
    assert run.config["strategy"] == knobs["strategy"]
    assert accuracy[2] > 0.8 and accuracy[2] > accuracy[0] + 0.5


def test_differential_privacy_clips_adds_noise_and_counts_epsilon(tmp_path):
    dp = {**QUICK, "partitioning": "iid", "dp-clipping-norm": 1.0}
    quiet = run_simulation({**dp, "run-name": "clip"}, num_supernodes=4, output_dir=tmp_path, echo=False)
    noisy = run_simulation(
        {**dp, "dp-noise-multiplier": 1.0, "run-name": "noise"}, num_supernodes=4, output_dir=tmp_path, echo=False
    )
    privacy = [r["clients-train"]["privacy"] for r in rf.RunFolder(noisy).history()["rounds"][1:]]
    assert privacy[0]["epsilon"] > 0 and privacy[1]["epsilon"] > privacy[0]["epsilon"]  # it adds up
    assert privacy[1]["delta"] == 1e-5
    assert rf.RunFolder(quiet).history()["rounds"][1]["clients-train"]["privacy"]["why-not"] == "no noise"
    a = rf.RunFolder(quiet).load_model().state_dict()
    b = rf.RunFolder(noisy).load_model().state_dict()
    assert not all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # the noise changed the model


def test_client_side_clipping_on_flowers_runtime_gives_the_server_side_model(tmp_path):
    """dp-clipping='client' on the real runtime: the nodes clip with fixedclipping_mod, the server
    (DifferentialPrivacyClientSideFixedClipping) only averages, and checks every reply's norm.
    Without noise the model moves at most the clipping norm per round, and it is the model
    server-side clipping makes of the same seed (the same updates, clipped the same way)."""
    from task.config import Settings
    from task.models import build_model

    clip = 0.05  # a node's update after one epoch on 15,000 images is far longer
    dp = {**QUICK, "partitioning": "iid", "dp-clipping-norm": clip}
    runs = {
        where: run_simulation(
            {**dp, "dp-clipping": where, "run-name": where}, num_supernodes=4, output_dir=tmp_path, echo=False
        )
        for where in ("client", "server")
    }
    history = rf.RunFolder(runs["client"]).history()
    assert rf.RunFolder(runs["client"]).config()["dp-clipping"] == "client"
    assert all(r["failures"] == [] and r["clients-train"]["nodes"] == 4 for r in history["rounds"][1:])
    assert history["rounds"][1]["clients-train"]["privacy"]["why-not"] == "no noise"
    start = build_model(Settings.from_run_config(dp)).state_dict()
    final = rf.RunFolder(runs["client"]).load_model().state_dict()
    moved = float(np.sqrt(sum(((final[k].double() - start[k].double()) ** 2).sum() for k in start)))
    assert 0.5 * clip < moved <= 2 * clip * (1 + 1e-4)  # two rounds, each an average of updates of norm <= clip
    server_side = rf.RunFolder(runs["server"]).load_model().state_dict()
    assert all(np.allclose(final[k].numpy(), server_side[k].numpy(), atol=1e-6) for k in final)


def test_the_robust_preset_keeps_one_node_scaling_its_update_x20_from_costing_a_point(tmp_path, monkeypatch):
    """On Flower's runtime: 10 nodes, each training every round; node 3 sends its update x20."""
    import tomllib
    from pathlib import Path

    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "1")  # reaches the SuperLink, the ServerApp and every ClientApp
    robust = tomllib.loads((Path(__file__).parent.parent / "presets" / "robust.toml").read_text())
    every = {**QUICK, "num-server-rounds": 3, "fraction-train": 1.0}
    runs = {
        name: run_simulation({**every, **knobs, "run-name": name}, num_supernodes=10, output_dir=tmp_path, echo=False)
        for name, knobs in {
            "honest": {},
            "attacked": {"fault-injection": "scale=20@3"},
            "defended": {**robust, "fault-injection": "scale=20@3"},
        }.items()
    }
    final = {name: rf.RunFolder(path).history()["rounds"][-1]["server"]["accuracy"] for name, path in runs.items()}
    assert final["attacked"] < final["honest"] - 0.05, final  # the attack works without the defense
    assert abs(final["defended"] - final["honest"]) <= 0.01, final
    dropped = [f for r in rf.RunFolder(runs["defended"]).history()["rounds"] for f in r["failures"]]
    assert [f["partition-id"] for f in dropped] == [3, 3, 3]  # the screen names it every round
