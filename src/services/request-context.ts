/** Who is asking, in which region, under which request id. Every service call takes one. */
export interface RequestContext {
  accountId: string;
  region: string;
  requestId: string;
}
