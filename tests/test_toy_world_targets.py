"""The toy world's held-out guidance targets and the one split into a tuning half and a report half."""
import collections

import numpy as np
import pytest

from toy_world import data, networks, splits, targets

TASKS = tuple(targets.COUNTS)
# The floors for the whole set: segmentation maps, box sets, classes, inpainting scenes, map-class pairs.
MINIMUM = {"segmentation": 32, "location": 32, "classification": 24, "inpainting": 16, "combination": 16}


def halves(task):
    return {half: targets.targets(task, half) for half in splits.HALVES}


def identity(target):
    """What makes a target itself: its scene seed, or its class, and its content."""
    if isinstance(target, targets.ClassTarget):
        return target.name
    if isinstance(target, targets.CombinationTarget):
        return target.map.seed, target.class_name
    return target.seed


def content(target):
    if isinstance(target, targets.MapTarget):
        return target.segmentation.tobytes()
    if isinstance(target, targets.BoxTarget):
        return target.boxes
    if isinstance(target, targets.InpaintingTarget):
        return target.image.tobytes(), target.hole
    if isinstance(target, targets.CombinationTarget):
        return target.map.segmentation.tobytes(), target.class_name
    return target.name


@pytest.mark.parametrize("task", TASKS)
def test_no_tuning_target_appears_in_the_report_half(task):
    drawn = halves(task)
    assert len(drawn["tuning"]) == len(drawn["report"]) and 2 * len(drawn["report"]) >= MINIMUM[task]
    for key in (identity, content):
        tuning, report = ({key(t) for t in drawn[half]} for half in splits.HALVES)
        assert len(tuning) == len(drawn["tuning"]) and len(report) == len(drawn["report"]), "a half repeats a target"
        assert not tuning & report, f"{task}: the halves share {sorted(map(str, tuning & report))[:3]}"


@pytest.mark.parametrize("task", TASKS)
def test_each_target_is_in_its_seed_s_half_and_from_scenes_no_network_saw(task):
    for half, drawn in halves(task).items():
        for target in drawn:
            if isinstance(target, targets.ClassTarget):
                assert splits.half_of_class(target.name) == half
                continue
            seed = target.map.seed if isinstance(target, targets.CombinationTarget) else target.seed
            assert splits.half_of_seed(seed) == half and seed in splits.TARGET_SEEDS
            assert all(seed not in seen for seen in (splits.TRAIN_SEEDS, splits.EVALUATOR_SEEDS, splits.TEST_SEEDS))


def test_the_seed_ranges_of_training_evaluation_testing_and_targets_do_not_overlap():
    ranges = [splits.TRAIN_SEEDS, splits.EVALUATOR_SEEDS, splits.TEST_SEEDS, splits.TARGET_SEEDS]
    for a in range(len(ranges)):
        for b in range(a + 1, len(ranges)):
            assert ranges[a].stop <= ranges[b].start or ranges[b].stop <= ranges[a].start


def test_sampling_seeds_of_the_two_halves_are_apart_and_checked():
    tuning, report = splits.sampling_seeds("tuning", 16), splits.sampling_seeds("report", 16)
    assert len(set(tuning)) == len(set(report)) == 16 and not set(tuning) & set(report)
    assert splits.sampling_seeds("report", 4) == report[:4]
    with pytest.raises(ValueError, match="unknown half 'test'"):
        splits.sampling_seeds("test", 2)
    with pytest.raises(ValueError, match="has 500 sampling seeds, not 501"):
        splits.sampling_seeds("report", 501)
    with pytest.raises(ValueError, match="unknown half"):
        targets.targets("segmentation", "all")


def test_targets_are_the_same_on_every_call():
    for task in TASKS:
        assert [content(t) for t in targets.targets(task, "report")] == [content(t) for t in targets.targets(task, "report")]


def test_every_class_is_a_target_and_each_half_balances_colours_and_shapes():
    tuning, report = ({t.name for t in targets.targets("classification", half)} for half in splits.HALVES)
    assert tuning | report == set(networks.CLASSIFIER_CLASSES)
    for names in (tuning, report):
        assert collections.Counter(name.split()[1] for name in names) == {shape: 3 for shape in data.SHAPES}
        assert collections.Counter(name.split()[0] for name in names) == {colour: 2 for colour in data.COLOUR_NAMES}


def test_box_sets_hold_one_to_three_distinct_shapes_as_in_their_scenes():
    counts = collections.Counter()
    for target in targets.targets("location", "report") + targets.targets("location", "tuning"):
        objects = data.scene(target.seed).objects
        assert [shape for shape, _ in target.boxes] == [o.shape for o in objects]
        assert len({shape for shape, _ in target.boxes}) == len(target.boxes)
        for (_, box), obj in zip(target.boxes, objects):
            assert np.allclose(np.array(box) * data.SIZE, obj.box) and 0 <= min(box) and max(box) <= 1
        counts[len(target.boxes)] += 1
    assert set(counts) == {1, 2, 3}


def test_inpainting_holes_lie_in_the_image_and_vary_in_place_and_size():
    drawn = targets.targets("inpainting", "report") + targets.targets("inpainting", "tuning")
    for target in drawn:
        x0, y0, x1, y1 = target.hole
        assert 0 <= x0 < x1 <= data.SIZE and 0 <= y0 < y1 <= data.SIZE
        assert targets.MIN_HOLE <= x1 - x0 <= targets.MAX_HOLE and targets.MIN_HOLE <= y1 - y0 <= targets.MAX_HOLE
        known = target.known()
        assert known[y0:y1, x0:x1].sum() == 0 and known.sum() == data.SIZE**2 - (x1 - x0) * (y1 - y0)
        assert np.array_equal(target.image, data.scene(target.seed).image)
    assert len({(h[2] - h[0], h[3] - h[1]) for h in (t.hole for t in drawn)}) >= len(drawn) // 2
    assert len({h[:2] for h in (t.hole for t in drawn)}) >= len(drawn) // 2


def test_a_combination_s_class_colours_a_shape_of_its_map_from_the_same_half():
    for half in splits.HALVES:
        for target in targets.targets("combination", half):
            colour, shape = target.class_name.split()
            assert 1 + data.SHAPES.index(shape) in np.unique(target.map.segmentation)
            assert splits.half_of_class(target.class_name) == half == splits.half_of_seed(target.map.seed)
