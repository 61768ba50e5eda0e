"""ClientCosts: each batch's measured time charged by pixels, and who is costly."""

from __future__ import annotations

import pytest

from workzone.client_costs import ClientCosts


@pytest.mark.parametrize("clients, pixels, seconds, costly", [
    (["a"], [1000], 0.3, {"a"}),                                  # alone in its batch: all of it
    (["a", "b"], [16_000_000, 300_000], 0.5, {"a"}),              # the large image pays for its pixels
    (["a", "b"], [300_000, 300_000], 0.5, {"a", "b"}),            # equal images, equal shares
    (["a", "b"], [300_000, 300_000], 0.3, set()),                 # 0.15 s each: under 0.2
    ([None, "b"], [16_000_000, 300_000], 0.5, set()),             # a keyless caller is never recorded
])
def test_a_batch_is_charged_by_pixels(clients, pixels, seconds, costly):
    costs = ClientCosts(costly_image_s=0.2)
    costs.charge(["x"] * 16, [300_000] * 16, 16 * 0.03)  # typical images: 30 ms each
    costs.charge(clients, pixels, seconds)
    assert {c for c in ("a", "b") if costs.is_costly(c)} == costly
    assert not costs.is_costly(None)


def test_a_saturated_server_keeps_one_lane():
    costs = ClientCosts(costly_image_s=0.2)
    for _ in range(8):  # every batch slow: 0.3 s an image, for everyone
        costs.charge(["a", "b", "c", "d"], [300_000] * 4, 1.2)
    assert not any(costs.is_costly(c) for c in "abcd")
    costs.charge(["e"], [16_000_000], 2.0)  # one image costs many times the others: costly still
    assert costs.is_costly("e")


def test_a_client_leaves_the_costly_lane_once_its_images_are_cheap_again():
    costs = ClientCosts(costly_image_s=0.2, smoothing=0.5)
    costs.charge(["x"] * 16, [1] * 16, 16 * 0.03)
    assert costs.is_costly("a", pixels=10) and not costs.is_costly("a", pixels=2)  # not measured: by its pixels
    costs.charge(["a"], [1], 1.0)
    seen = []
    for _ in range(4):
        costs.charge(["a"], [1], 0.03)
        seen.append(costs.is_costly("a"))
    assert seen == [True, True, False, False]  # 0.515, 0.27, 0.15, 0.09 s
    assert not costs.is_costly("a", pixels=1000)  # measured: its pixels no longer count


def test_zero_turns_it_off_and_the_quietest_clients_are_forgotten():
    off = ClientCosts(costly_image_s=0)
    off.charge(["a"], [1], 10.0)
    assert not off.is_costly("a") and off.cost("a") == 10.0
    few = ClientCosts(max_clients=2)
    for c in ("a", "b", "a", "c"):
        few.charge([c], [1], 1.0)
    assert few.cost("b") is None and few.cost("a") == 1.0 and few.cost("c") == 1.0


@pytest.mark.parametrize("kwargs", [{"costly_image_s": -1}, {"smoothing": 0}, {"smoothing": 1.5}, {"ratio": 0.5}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ClientCosts(**kwargs)


def test_a_client_alone_is_never_costly_however_its_batches_vary():
    """One client sending all the traffic (a load test, one validator): a slow batch must not move it,
    and with it the whole server, to the one-image lane; it is compared with other clients' images."""
    costs = ClientCosts(costly_image_s=0.2)
    costs.charge(["a"] * 16, [300_000] * 16, 16 * 0.03)
    costs.charge(["a"], [300_000], 2.0)  # one slow batch: 1 s smoothed, 33x its typical image
    assert costs.cost("a") > 0.2 and not costs.is_costly("a")
    costs.charge(["b"] * 16, [300_000] * 16, 16 * 0.03)  # another client, typical images
    assert costs.is_costly("a") and not costs.is_costly("b")  # now someone waits behind a's images


def test_a_client_sending_most_images_is_costly_beside_cheap_ones():
    costs = ClientCosts(costly_image_s=0.2)
    costs.charge(["h"] * 8, [300_000] * 8, 8 * 0.03)  # an honest client's few images
    for _ in range(40):  # an attacker's large images, back to back: most of the recent ones
        costs.charge(["a"], [16_000_000], 1.0)
    assert costs.is_costly("a") and not costs.is_costly("h")
