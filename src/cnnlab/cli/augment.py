"""``cnnlab augment --preview``: see what the model sees under an augmentation preset."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    from cnnlab.augment.affine import PRESETS

    parser = subparsers.add_parser(
        "augment", help="preview an augmentation preset",
        description="Write a grid image: the first row holds original images, each further row "
        "the same images augmented again (a new random draw per row).")
    parser.add_argument("--preset", default="keras", choices=sorted(PRESETS))
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--preview", default="augment-preview.png", metavar="PNG",
                        help="where to write the grid")
    parser.add_argument("--images", type=int, default=8, help="images per row")
    parser.add_argument("--rows", type=int, default=4, help="augmented rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def run(args) -> int:
    from cnnlab.augment.preview import write_preview

    path = write_preview(args.data, args.preview, preset=args.preset, images=args.images,
                         rows=args.rows, seed=args.seed)
    print(f"wrote {path}")
    return 0
