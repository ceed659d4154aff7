"""Request handling independent of the transport: Predict, GetModelMetadata and GetModelStatus over the models."""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from serving.dev_server.errors import ServingError, invalid
from serving.dev_server.predict import run_predict
from serving.dev_server.versions import LoadedVersion, ServedModel


class ModelServer:
    """Predict / GetModelMetadata / GetModelStatus over a set of ServedModels (what both front ends call)."""

    def __init__(self, models: list[ServedModel], as_content: bool = False):
        self.models = {m.name: m for m in models}
        self.as_content = as_content

    def poll_all(self) -> None:
        """Poll every model's base path once (load, warm up and swap in new versions)."""
        for model in self.models.values():
            model.poll(lambda served, request, model=model: run_predict(served, request, model.max_batch_size,
                                                                        batch_size_inputs=model.batch_size_inputs))

    def resolve(self, spec) -> tuple[ServedModel, LoadedVersion]:
        """The model and version a ModelSpec asks for, or NOT_FOUND like TF Serving."""
        if spec.version_label:
            raise invalid(f"Unrecognized servable version label: {spec.version_label}")
        wanted = spec.version.value if spec.HasField("version") else None
        described = f"Specific({spec.name}, {wanted})" if wanted is not None else f"Latest({spec.name})"
        model = self.models.get(spec.name)
        current = model.current if model is not None else None
        if current is None or (wanted is not None and wanted != current.version):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {described}")
        return model, current

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """PredictionService.Predict."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        model, served = self.resolve(request.model_spec)
        return run_predict(served, request, model.max_batch_size, self.as_content, model.batch_size_inputs)

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """PredictionService.GetModelMetadata (signature_def only, like TF Serving)."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        _, served = self.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = served.name
        response.model_spec.version.value = served.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in served.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        """ModelService.GetModelStatus."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        if spec.version_label:
            raise invalid(f"Unrecognized servable version label: {spec.version_label}")
        model = self.models.get(spec.name)
        statuses = model.statuses() if model is not None else []
        if spec.HasField("version"):
            statuses = [(v, s) for v, s in statuses if v == spec.version.value]
            if not statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} of model {spec.name}")
        elif not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, status in statuses:
            entry = response.model_version_status.add(version=version, state=status.state)
            entry.status.error_code = status.error_code
            entry.status.error_message = status.error_message
        return response
