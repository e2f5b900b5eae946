"""Where the repository and its built programs are: the one place that computes them."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build")
PODSERVER = os.path.join(BUILD, "podserver")
HTTPPROBE = os.path.join(BUILD, "httpprobe")
RESULTS = os.path.join(REPO, "results")
