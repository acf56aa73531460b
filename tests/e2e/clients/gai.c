/* gai NAME [4|6]: getaddrinfo(NAME) with the libc it is linked against (the tests link it with
 * musl-gcc -static), one numeric address per line in the order getaddrinfo returned them.
 * On failure: the EAI_* name on stdout and exit status 2. No family argument means AF_UNSPEC, so
 * musl asks A and AAAA in parallel, which is what the tests rely on. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const char *eai_name(int rc)
{
	switch (rc) {
	case EAI_AGAIN: return "EAI_AGAIN";
	case EAI_BADFLAGS: return "EAI_BADFLAGS";
	case EAI_FAIL: return "EAI_FAIL";
	case EAI_FAMILY: return "EAI_FAMILY";
	case EAI_MEMORY: return "EAI_MEMORY";
	case EAI_NONAME: return "EAI_NONAME";
	case EAI_SERVICE: return "EAI_SERVICE";
	case EAI_SOCKTYPE: return "EAI_SOCKTYPE";
	case EAI_SYSTEM: return "EAI_SYSTEM";
#ifdef EAI_NODATA
	case EAI_NODATA: return "EAI_NODATA";
#endif
	default: return "EAI_UNKNOWN";
	}
}

int main(int argc, char **argv)
{
	struct addrinfo hints, *res, *ai;
	char buf[INET6_ADDRSTRLEN];
	int rc;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s NAME [4|6]\n", argv[0]);
		return 64;
	}
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	if (argc == 3)
		hints.ai_family = strcmp(argv[2], "6") == 0 ? AF_INET6 : AF_INET;
	/* One socket type, so each address is listed once, not once per SOCK_* type. */
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(argv[1], NULL, &hints, &res);
	if (rc != 0) {
		printf("%s\n", eai_name(rc));
		fprintf(stderr, "%s: %s\n", argv[1], gai_strerror(rc));
		return 2;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		const void *addr = ai->ai_family == AF_INET6
			? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
			: (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
		if (inet_ntop(ai->ai_family, addr, buf, sizeof buf))
			printf("%s\n", buf);
	}
	freeaddrinfo(res);
	return 0;
}
