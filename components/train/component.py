"""KFP wrapper of the training step: splits in, LoRA adapter (safetensors) + training metrics out."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def train(parent_run_id: str, overrides: list, train_data: Input[Dataset], validation_data: Input[Dataset],
          adapter: Output[Model], metrics: Output[Metrics]):
    """LoRA fine-tuning on Ray Train (FSDP2 or DDP workers); checkpoints resume after a worker dies."""
    from pathlib import Path

    from components.train.logic import train_adapter
    from llmops.data.erasures import source_md5s_from_tags
    from llmops.modeling.base import base_model_path
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("train", parent_run_id) as report:
        settings = get_settings()
        params = settings.params(overrides)
        result = train_adapter(settings, params, train_path=Path(train_data.path),
                               validation_path=Path(validation_data.path),
                               base_model_dir=base_model_path(settings, params), out_dir=Path(adapter.path),
                               parent_run_id=parent_run_id,
                               data_sources=source_md5s_from_tags(train_data.metadata))
        report.figures(**{k: result.metrics[k] for k in ("train_loss", "val_loss", "tokens_per_s")
                          if k in result.metrics})
    adapter.metadata["format"] = "peft-lora-safetensors"
    adapter.metadata["base_model"] = params.model.base
    adapter.metadata.update(result.lineage)  # data.* and base_model.* of what train really read: for register
    # the datasets validate_data verified these splits were merged from (sources.json md5s == the split md5s)
    adapter.metadata.update({k: v for k, v in train_data.metadata.items() if k.startswith("data.source")})
    for key, value in result.metrics.items():
        if isinstance(value, int | float):
            metrics.log_metric(key, float(value))
