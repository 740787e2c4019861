import torch

from task.config import Settings
from task.models import MLP, Autoencoder, build_model


def test_mlp_is_the_papers_2nn():
    model = MLP()
    assert model(torch.zeros(5, 784)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # 784*200+200 + 200*200+200 + 200*10+10: the 199,210 parameters of McMahan et al.'s 2NN
    assert sum(p.numel() for p in model.parameters()) == 199_210


def test_autoencoder_shapes_and_pixel_range():
    model = Autoencoder((500, 250), 30)
    x = torch.rand(4, 784)
    with torch.no_grad():
        code = model.encode(x)
        out = model.decode(code)
    assert code.shape == (4, 30)

    assert out.shape == (4, 784)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_build_model_is_seeded():
    a = build_model(Settings(seed=1)).state_dict()
    b = build_model(Settings(seed=1)).state_dict()
    c = build_model(Settings(seed=2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert isinstance(build_model(Settings(model="autoencoder")), Autoencoder)


def test_weights_handed_out_do_not_change_when_the_model_trains_on():
    from task.training import get_weights

    model = build_model(Settings())
    weights = get_weights(model)
    before = [w.copy() for w in weights]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all((w == b).all() for w, b in zip(weights, before))


def test_each_pretraining_stage_is_one_encoder_layer_and_its_mirror():
    model = Autoencoder((500, 250), 30)
    shapes = []
    for k in range(model.num_stages):
        below, pair = model.stage(k)
        784 if k == 0 else (500, 250)[k - 1]
        x = torch.rand(3, 784)
        with torch.no_grad():
            h = below(x)
            shapes.append((h.shape[1], pair.encode(h).shape[1], pair(h).shape[1]))
    assert shapes == [(784, 500, 784), (500, 250, 500), (250, 30, 250)]
    # the pairs are views of the stack: together they hold every parameter once
    ids = [id(p) for k in range(model.num_stages) for p in model.stage(k)[1].parameters()]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    # the outermost pair reconstructs pixels, so it ends in the sigmoid
    assert isinstance(model.stage(0)[1].decoder[-1], torch.nn.Sigmoid)
