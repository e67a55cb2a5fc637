"""The product as a DICOM AI node: takes images from a PACS, files the models' reports back.

A process of its own beside the gateway (``python -m dicom_node``), not a part of it:
it holds instances for seconds while a study completes and speaks DICOM's upper layer, which the
gateway's request-per-thread HTTP serving does not; it reaches the models only through the
gateway's public compare endpoint, as any client does, so it needs no model repository, no
model-server address and no TensorFlow, and the gateway stays stateless.

    PACS --C-STORE / STOW-RS--> node (inbox: memory, byte budget, quiet period per study)
         <--STOW-RS / C-STORE--  |  POST .../cohorts/<modality>/<strategy>:compare
                                 v  Accept: application/dicom  ->  TID 1500 SR
                               gateway --gRPC--> model server

- ``admission``: which instances are taken (image classes, transfer syntaxes, UIDs);
- ``inbox``: held in memory within a byte budget, grouped by study, handed on when quiet;
- ``dimse``, ``stow``: the two doors (C-STORE SCP; STOW-RS and /healthz over HTTP);
- ``report``: the gateway asked per instance, the SRs checked and stored all-or-nothing per study;
- ``pacs``: where the SRs go (STOW-RS or C-STORE);
- ``node``: the pieces assembled; ``__main__``: the command line.
"""
from dicom_node.node import Node, NodeConfig

__all__ = ["Node", "NodeConfig"]
