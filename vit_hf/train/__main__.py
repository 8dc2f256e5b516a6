"""`python -m vit_hf.train` / `accelerate launch -m vit_hf.train`."""

from .loop import main

main()
