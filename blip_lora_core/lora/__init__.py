"""Hook-based LoRA: the forward hooks and their state, dropout, adapter files, peft interop.

Only this subpackage reads or writes a layer's LoRA state.
"""
