"""Textual inversion (Forget-Me-Not's first stage and the concept-inversion attack) on a tiny model, and the attack
on the embedded one."""

import torch

from fmn.attack import AttackConfig, concept_inversion
from fmn.diffusion import encode
from fmn.erase import erase, make_method
from fmn.inversion import InversionConfig, Inverted, concept_token_ids, invert, inverted
from fmn.tiny import tiny_pipeline


def denoising_loss(pipe, concept, latents, learned=None, n=16):
    """Mean denoising loss on fixed noise and steps, so two calls compare like with like."""
    g = torch.Generator().manual_seed(123)
    z0 = latents.repeat(n // len(latents) + 1, 1, 1, 1)[:n]
    noise = torch.randn(z0.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    with torch.no_grad():
        if learned is None:
            emb = encode(pipe, [f"a photo of {concept}"] * n).states
        else:
            with inverted(pipe, learned):
                emb = encode(pipe, [f"a photo of {concept}"] * n).states
        pred = pipe.unet(pipe.scheduler.add_noise(z0, noise, t), t, emb).sample
    return (pred - noise).pow(2).mean().item()


def test_inverted_words_change_only_prompts_that_name_the_concept():
    pipe = tiny_pipeline()
    ids = concept_token_ids(pipe, "circle")  # one text encoder: one list
    table = pipe.text_encoder.get_input_embeddings().weight
    same = Inverted(ids, [table[ids[0]].detach().clone()])
    other = Inverted(ids, [torch.randn(len(ids[0]), table.shape[1])])
    with torch.no_grad():
        plain = encode(pipe, ["a red circle", "a blue square"]).states
        with inverted(pipe, same):
            assert torch.allclose(encode(pipe, ["a red circle", "a blue square"]).states, plain, atol=1e-6)
        with inverted(pipe, other):
            changed = encode(pipe, ["a red circle", "a blue square"]).states
        assert not torch.allclose(changed[0], plain[0])
        assert torch.allclose(changed[1], plain[1], atol=1e-6)
        assert torch.allclose(encode(pipe, ["a red circle"]).states, plain[:1])  # the hook is gone after the block


def test_inversion_lowers_the_denoising_loss_of_its_images_and_trains_nothing_else():
    pipe = tiny_pipeline()
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()} | {
        f"te.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    latents = torch.randn(4, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size,
                          generator=torch.Generator().manual_seed(0))
    before = denoising_loss(pipe, "circle", latents)
    steps = []
    learned = invert(pipe, "circle", latents, InversionConfig(steps=60, lr=5e-2), on_step=lambda *a: steps.append(a))
    assert len(steps) == 60 and steps[-1][:2] == (60, 60)
    assert denoising_loss(pipe, "circle", latents, learned) < before
    after = ({k: v for k, v in pipe.unet.state_dict().items()}
             | {f"te.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    assert all(torch.equal(v, weights[k]) for k, v in after.items())


def test_attack_learns_against_the_erased_model_and_leaves_no_patch_active():
    pipe = tiny_pipeline()
    latents = torch.randn(2, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size,
                          generator=torch.Generator().manual_seed(0))
    base = denoising_loss(pipe, "circle", latents)
    patch = erase(pipe, ["circle"], "esd-x", steps=5, sample_steps=4, trajectories=2)
    learned = concept_inversion(pipe, "circle", [patch.name], AttackConfig(steps=5, images=2, image_steps=4))
    assert [v.shape for v in learned.vectors] == [(len(concept_token_ids(pipe, "circle")[0]),
                                                   pipe.text_encoder.config.hidden_size)]
    assert torch.isfinite(learned.vectors[0]).all()
    assert denoising_loss(pipe, "circle", latents) == base  # the patch is attached but switched off again


def test_forget_me_not_with_inversion_trains_on_the_name_and_the_learned_words():
    pipe = tiny_pipeline()
    method = make_method("fmn", ["circle"], inversion_steps=3, references=2, reference_steps=4)
    with torch.no_grad():
        refs = method.references(pipe, torch.Generator().manual_seed(0))
    with torch.no_grad():
        named = encode(pipe, refs.prompts).states
    assert refs.learned.states.shape == named.shape and not torch.allclose(refs.learned.states, named)
    patch = erase(pipe, ["circle"], "fmn", steps=3, inversion_steps=3, references=2, reference_steps=4)
    assert patch.settings["inversion_steps"] == 3


def test_the_attack_keeps_a_concept_the_model_was_never_made_to_forget(embedded, judge):
    """Inverted on the unedited model from images it draws itself, the concept's words still bring the
    concept on held-out prompts: an attacker that loses what was never erased would understate recovery."""
    from fmn.bench.protocol import found, probes
    from fmn.generate import generate_many

    prompts = probes("identity", "Tobble", 8).erased
    learned = concept_inversion(embedded, "Tobble", [], AttackConfig(steps=40, image_steps=12))
    with inverted(embedded, learned):
        images = generate_many(embedded, [p.text for p in prompts], list(range(len(prompts))), 12)
    kept = sum(found(v, p) for v, p in zip(judge(images), prompts))
    assert kept >= 7, kept


def test_the_studio_attacks_with_the_judge_as_its_eye_on_the_shapes_world(monkeypatch):
    """The app's "Try to break it" keeps the words the judge finds the concept in most surely, as the
    benchmark's attacker does; a word the judge does not know is attacked blind."""
    import fmn.studio
    from fmn.world.render import render
    from fmn.world.scenes import Scene, Thing

    studio = fmn.studio.Studio(device="cpu")
    patch = studio.erase(["circle"], "uce")
    eyes = []
    monkeypatch.setattr(fmn.studio, "concept_inversion", lambda *args: eyes.append(args[-1]))
    studio.attack("circle", [patch])
    studio.attack("dragon", [patch])
    eye, blind = eyes
    circles = [render(Scene([Thing("circle", c, 32, 32, 24)]))[0] for c in ("red", "blue")]
    squares = [render(Scene([Thing("square", c, 32, 32, 24)]))[0] for c in ("red", "blue")]
    assert blind is None and eye(circles) > 0.9 > 0.1 > eye(squares)
