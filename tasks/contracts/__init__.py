"""Every format that crosses a stage or process boundary, defined once and
parsed strictly: the dataset folders, the processed-data meta and splits, the
table encoder, the ONNX artifact and the prediction log. Writers and readers
(stages, deploy/, flows/) import the same definition. Imports only tasks.core."""
