# The calculator's Add from Python over grpc:, with Debian's python3-grpcio:
#   PYTHONPATH=BUILD/examples/calculator python3 calculator.py 127.0.0.1:PORT
import sys, grpc, calculator_pb2 as calc
add = grpc.insecure_channel(sys.argv[1]).unary_unary("/calc.Calculator/Add",
    request_serializer=calc.AddRequest.SerializeToString, response_deserializer=calc.AddReply.FromString)
print("Add(40, 2) =", add(calc.AddRequest(a=40, b=2), timeout=5).sum)
