"""The container images components run in on a cluster (the project's images carry the code, so
`packages_to_install` stays empty and local runs need no network). Names come from settings
(LLMOPS_IMAGE_REGISTRY + LLMOPS_IMAGE_TAG); `make images` builds them under the same names."""

from llmops.settings import get_settings

BASE_IMAGE: str = get_settings().image  # CPU steps (infra/docker/cpu)
TRAIN_IMAGE: str = get_settings().train_image  # CUDA training (infra/docker/cuda)
TRTLLM_IMAGE: str = get_settings().trtllm_image  # TensorRT-LLM engine builds (infra/docker/trtllm)
