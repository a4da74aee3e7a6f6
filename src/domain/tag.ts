export interface Tag {
  tagKey: string;
  tagValue: string;
}
