"""The listeners: UDP (recvmmsg/sendmmsg) and TCP; they see resolve through a Protocol."""
