"""The stand-in's ``LoRARequest`` (name, integer id, adapter folder), as vllm.lora.request has it."""

from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str
