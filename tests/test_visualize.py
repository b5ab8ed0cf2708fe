"""Drawing boxes, masks and semantic maps, grids and atomic PNG writes."""

import cv2
import numpy as np
import pytest

from tfvision import visualize
from tfvision.data.label_map import LabelMap


def test_class_colors_follow_the_voc_colour_map():
    assert visualize.class_color(0) == (0, 0, 0)
    assert visualize.class_color(1) == (128, 0, 0)
    assert visualize.class_color(2) == (0, 128, 0)
    assert visualize.class_color(3) == (128, 128, 0)
    assert visualize.class_color(8) == (64, 0, 0)


def test_boxes_are_drawn_where_they_are_and_padding_is_skipped():
    image = np.zeros((40, 50, 3), np.uint8)
    out = visualize.draw_boxes(image, [[10, 5, 30, 45], [0, 0, 0, 0]], [1, -1], thickness=1)
    assert out.shape == image.shape and not image.any()  # the input is not modified
    color = np.array(visualize.class_color(1))
    assert (out[30, 20] == color).all()  # bottom edge, y=30
    assert (out[20, 45] == color).all()  # right edge, x=45
    assert not out[20, 20].any()  # inside stays untouched


def test_box_labels_use_the_label_map_and_unknown_ids_fail():
    image = np.zeros((60, 60, 3), np.uint8)
    label_map = LabelMap(names=("circle",))
    out = visualize.draw_boxes(image, [[20, 10, 50, 50]], [1], scores=[0.9], label_map=label_map)
    assert out[:20].any()  # the label box sits above the box
    with pytest.raises(ValueError, match="beyond the label map"):
        visualize.draw_boxes(image, [[20, 10, 50, 50]], [2], label_map=label_map)


def test_masks_and_segmentation_blend_only_their_pixels():
    image = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 2:4, 2:4] = 1
    out = visualize.draw_masks(image, mask, [1], alpha=0.5)
    assert (out[2, 2] == [114, 50, 50]).all() and (out[0, 0] == 100).all()
    seg = np.zeros((8, 8), np.int32)
    seg[5, 5], seg[6, 6] = 2, 255
    out = visualize.draw_segmentation(image, seg, alpha=0.5)
    assert (out[5, 5] == [50, 114, 50]).all() and (out[6, 6] == 100).all()


def test_grid_and_png_round_trip(tmp_path):
    tiles = [np.full((4, 6, 3), v, np.uint8) for v in (10, 20, 30)]
    grid = visualize.make_grid(tiles, columns=2, pad=1)
    assert grid.shape == (2 * 5 + 1, 2 * 7 + 1, 3)
    assert (grid[1, 1] == 10).all() and (grid[1, 8] == 20).all() and (grid[6, 1] == 30).all()
    path = visualize.save_png(tmp_path / "sub" / "g.png", grid)
    back = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, grid)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["g.png"]
    with pytest.raises(ValueError, match="RGB image"):
        visualize.save_png(tmp_path / "x.png", np.zeros((4, 4)))
