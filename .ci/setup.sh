# Set up this project on a fresh Debian / Ubuntu machine, then stay in its environment. Source it from the repository
# root: `. .ci/setup.sh`. It installs the system packages ffcv builds against (a C compiler, Python headers, OpenCV,
# libjpeg-turbo) and the offline Fashion-MNIST set (apt-get; through sudo when not root), makes and activates a
# virtual environment .venv unless one (or a conda env) is already active, and installs requirements.txt and the
# project itself (`pip install -e .`: `import recondec` works from anywhere, Hydra's submitit workers included).
# Its status is the last step's, so that `. .ci/setup.sh && <command>` runs the command only after a good set-up.
_sudo=$([ "$(id -u)" = 0 ] || echo sudo)
$_sudo apt-get update && $_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3-venv python3-dev build-essential pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist \
  && { [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || { python3 -m venv .venv && . .venv/bin/activate; }; } \
  && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore pip install -r requirements.txt -e .
