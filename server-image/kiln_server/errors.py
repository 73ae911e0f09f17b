"""The two kinds of failure the server tells apart.

A ClientError is the caller's mistake and becomes a 4xx response with a JSON body
``{"error": "..."}``; a StartupError stops the server before it listens, with a
message and a non-zero exit status.
"""


class ClientError(Exception):
    """A request the server will not serve; ``status`` is the HTTP status to answer with.

    400: the body is not a valid request of the protocol (malformed JSON, missing
         fields, shape and data that disagree).
    404: no such model, version or route.
    405: the route exists but not for this method.
    413: the body is larger than the configured limit.
    422: a well-formed request this model cannot take (unknown or missing feature,
         wrong number of columns, wrong datatype, missing values it cannot handle).
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class StartupError(Exception):
    """The model cannot be served: bad configuration, checksum mismatch, refused format..."""
