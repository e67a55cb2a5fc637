# Model server for the cluster: the official TensorFlow Serving image reading the model
# repository this product writes (<repo>/<model>/<version>/, models.config, batching.config),
# mounted at /models. The embedded server (python -m serving serve) speaks the same gRPC API
# on one machine.
# Not yet pinned by digest: no digest of this tag could be recorded here; pin it as
# docs/deployment.md#base-images says before a release build.
FROM tensorflow/serving:2.16.1

# Not root: the repository is published world-readable (files 0644, folders 0755), so any uid
# can read it; the pod also sets runAsNonRoot and a read-only root filesystem.
USER 65532:65532
EXPOSE 8500 8501
# The image's entrypoint starts tensorflow_model_server and appends these arguments.
CMD ["--port=8500", "--rest_api_port=8501", \
     "--model_config_file=/models/models.config", \
     "--model_config_file_poll_wait_seconds=30", \
     "--file_system_poll_wait_seconds=30", \
     "--enable_batching=true", \
     "--batching_parameters_file=/models/batching.config", \
     "--enable_model_warmup=true"]
