"""Its older home: the local servers live in persd.runtime.local_server (one module, public API)."""
from persd.runtime.local_server import (
    FAULTS,
    Arrival,
    FaultPlan,
    LocalOpenAIServer,
    Responder,
    default_responder,
    json_response,
    main,
)

__all__ = ["FAULTS", "Arrival", "FaultPlan", "LocalOpenAIServer", "Responder", "default_responder",
           "json_response", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
