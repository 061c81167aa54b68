/*
 * libmicrohttpd's built-in error pages answered in keel's JSON (mhdpages.c
 * says how), and the one way keel itself queues a response.
 */
#ifndef KEEL_CORE_HTTP_MHDPAGES_H
#define KEEL_CORE_HTTP_MHDPAGES_H

#include <microhttpd.h>

/* Finds libmicrohttpd's MHD_queue_response and notes the limits the 431
 * and 414 answers name; 0 or KEEL_EINVAL (logged). */
int keel__mhd_pages_init(long max_header_bytes, int max_uri_bytes);

/* Queues a response keel made: libmicrohttpd's MHD_queue_response itself. */
enum MHD_Result keel__mhd_queue(struct MHD_Connection *conn, unsigned int status,
                                struct MHD_Response *resp);

#endif
