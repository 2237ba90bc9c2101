import pytest


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """4 classes x 5 real mp4 videos (96x80, 40 frames) from the project's generator."""
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, classes=4, videos_per_class=5, size=(96, 80), frames=40, seed=1, workers=1,
                     val_fraction=0.4)
    return root
