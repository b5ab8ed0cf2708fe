"""Export for serving: SavedModels with the TF Serving contract, and client-side request helpers."""

from tfvision.export.saved_model import (
    DetectionServingModule,
    RegionDetectionServingModule,
    SegmentationServingModule,
    ServingModule,
    export_detection,
    export_segmentation,
    export_serving_module,
)
from tfvision.export.serving import (
    grpc_predict_inputs,
    parse_grpc_outputs,
    parse_predict_response,
    predict_request,
    predict_request_json,
    predict_url,
    read_labels,
)

__all__ = [
    "DetectionServingModule",
    "RegionDetectionServingModule",
    "SegmentationServingModule",
    "ServingModule",
    "export_detection",
    "export_segmentation",
    "export_serving_module",
    "grpc_predict_inputs",
    "parse_grpc_outputs",
    "parse_predict_response",
    "predict_request",
    "predict_request_json",
    "predict_url",
    "read_labels",
]
