"""The judge's last stage (fmn/recipe/judge.py): labels from the pixel check, heads left out where it abstains,
hue turns that keep luminance, and a short run that writes a judge which loads."""

import random

import numpy as np
import torch

from fmn.recipe.judge import JudgeConfig, _hue_rotated, model_targets, train_judge_on_model
from fmn.world.judge import BACKGROUND_CLASSES, COLOUR_NAMES, STYLE_CLASSES, SUBJECTS, Judge, JudgeNet, scene_targets
from fmn.world.pixels import PixelRead, read
from fmn.world.render import render
from fmn.world.scenes import sample_scene


def test_a_plain_render_read_by_the_pixels_gets_the_scene_own_targets():
    scene = sample_scene(random.Random(3), "any", two_objects=0, kinds=["star"], colours=["green"], style="plain",
                         background="sand", night=False)
    targets, known = model_targets(read(render(scene, seed=3)[0]))
    truth = scene_targets(scene)
    assert all(known.values())
    for head in truth:
        assert torch.equal(targets[head].float(), truth[head].float()), head


def test_heads_the_pixels_leave_open_are_not_known():
    targets, known = model_targets(PixelRead(background="grass", night=True, shape=None, colour=None))
    assert known == {"subjects": 0.0, "colours": 0.0, "style": 0.0, "background": 1.0, "night": 1.0}
    assert BACKGROUND_CLASSES[int(targets["background"])] == "grass" and targets["night"] == 1
    targets, known = model_targets(PixelRead(background=None, night=None, shape="ring", colour=None))
    assert known["subjects"] == known["style"] == 1.0 and known["colours"] == 0.0
    assert SUBJECTS[int(targets["subjects"].argmax())] == "ring" and targets["subjects"].sum() == 1
    assert STYLE_CLASSES[int(targets["style"])] == "plain"


def test_a_head_left_out_does_not_move_the_loss():
    torch.manual_seed(0)
    net, x = JudgeNet(width=8), torch.rand(4, 3, 64, 64) * 2 - 1
    targets = {"subjects": torch.zeros(4, len(SUBJECTS)), "colours": torch.zeros(4, len(COLOUR_NAMES)),
               "style": torch.zeros(4, dtype=torch.long), "background": torch.zeros(4, dtype=torch.long),
               "night": torch.zeros(4)}
    known = {head: torch.ones(4) for head in targets}
    known["colours"] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    other = {**targets, "colours": targets["colours"].clone()}
    other["colours"][1:, 2] = 1  # images 1-3: another colour, but their colour is not known
    assert torch.allclose(net.loss(x, targets, known), net.loss(x, other, known))
    other["colours"][0, 2] = 1  # image 0's colour is known
    assert not torch.allclose(net.loss(x, targets, known), net.loss(x, other, known))
    assert torch.allclose(net.loss(x, targets), net.loss(x, targets, {h: torch.ones(4) for h in targets}))


def test_a_hue_turn_keeps_luminance_and_greys_and_changes_colours():
    x = torch.tensor([[0.5, -0.2, -0.2], [0.2, 0.2, 0.2]]).T.reshape(1, 3, 2, 1)  # a pale red and a grey pixel
    turned = _hue_rotated(x, torch.tensor([2.0]))
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    assert torch.allclose((turned * luma).sum(1), (x * luma).sum(1), atol=1e-4)
    assert torch.allclose(turned[..., 1, :], x[..., 1, :], atol=1e-4)  # grey stays grey
    assert (turned[0, :, 0, 0] - x[0, :, 0, 0]).abs().max() > 0.2  # red is no longer red
    assert torch.allclose(_hue_rotated(x, torch.tensor([0.0])), x, atol=1e-5)


def test_a_short_run_writes_a_judge_that_loads_and_has_learned(tmp_path):
    cfg = JudgeConfig(prompts=3, steps=2, methods=0, renders=16, train_steps=2, batch=4, work=str(tmp_path / "work"),
                      out=str(tmp_path / "judge"))
    train_judge_on_model(cfg)
    before, after = Judge.load(cfg.judge), Judge.load(cfg.out)
    assert (tmp_path / "work" / "drawn-unedited.safetensors").is_file()
    image = np.zeros((1, 64, 64, 3), np.uint8)
    assert before(image)[0] != after(image)[0]  # trained: not the judge it started from
