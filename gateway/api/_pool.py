"""The descriptor pool that holds the gateway's own generated protobuf types.

protoc's Python output registers every file in protobuf's process-wide default
pool. The gateway also imports ``tritonclient``, whose generated modules put
the very same symbols (``inference.ModelInferRequest``, ...) into that default
pool from a file with a different name (``grpc_service.proto`` rather than our
``inference/grpc_service.proto``). A second definition of a symbol from another
file is refused: importing both raises ``TypeError: Couldn't build proto file
into descriptor pool: duplicate symbol``.

``protos/generate.py`` therefore rewrites our generated modules to register in
this private pool instead. The messages are wire-identical to Triton's, so
bytes move freely between the two; only the Python classes differ. Code that
looks types up by name (server reflection, ``json_format`` with ``Any``,
``symbol_database``) must be given ``POOL`` explicitly.

Hand-written, not generated: the generator never overwrites this file.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
